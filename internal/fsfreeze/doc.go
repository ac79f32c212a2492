// Package fsfreeze owns freezing a filesystem for a consistent snapshot:
// FIFREEZE flushes it and blocks new writes until FITHAW. Only a freeze
// this package made is ever thawed by it, so that a caller cannot end a
// freeze that someone else (a backup agent, fsfreeze(8)) holds.
package fsfreeze
