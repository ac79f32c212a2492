//go:build race

package cairnctl

const raceEnabled = true
