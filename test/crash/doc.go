// Package crash is Cairn's crash-consistency fault-injection harness. It
// runs the real cairn binary against real pools on loop filesystems,
// drives a random mix of CSI operations, kills the process with SIGKILL at
// random moments and at every named kill point (internal/crashpoint),
// restarts it, and after every restart checks that the metadata store, the
// pool's disk, the mount table, the loop devices and the encryption keys
// in the kernel (fscrypt keys, LUKS mappings) agree, that data written
// through a publish is intact, and that every interrupted call, retried as
// an orchestrator would, converges.
//
// The tests are all in crash_test.go and friends; see README.md for how to
// run a long campaign and how to replay a failure.
package crash
