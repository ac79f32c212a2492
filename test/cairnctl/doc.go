// Package cairnctl tests the cairnctl binary end to end: it builds
// cmd/cairnctl, starts the real cairn binary with internal/testdriver, and
// runs every command against it, parsing the table and JSON output and
// checking exit codes, mutual TLS, the bench, interruption and shell
// completion; and it checks that docs/operations.md names every flag the
// cairn binary has. Staging and publishing make real mounts, so those tests
// need root and skip (saying so) without it.
package cairnctl
