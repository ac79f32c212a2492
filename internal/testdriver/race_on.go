//go:build race

package testdriver

const raceEnabled = true
