// Package security checks Cairn's security promises against the real
// binary: secrets passed in any CSI request never reach the log, on
// success or error paths; the Unix socket is 0600 (0660 with a group); and
// a tcp:// endpoint demands mutual TLS and refuses to start without it.
package security
