// Package cairnctl owns the cairnctl command: a CSI client for any CSI
// driver, not only Cairn. It owns the command tree (cobra), the global
// flags, connecting to an endpoint (Unix socket, or TCP with mutual TLS),
// turning CSI responses into tables, JSON or YAML, and the exit codes that
// scripts rely on. The built-in benchmark lives in internal/cairnctl/bench
// and the /proc lookups it needs in internal/cairnctl/procinfo.
//
// cairnctl speaks only the CSI protocol: everything it knows about a driver
// comes from the driver's advertised capabilities, so it tolerates drivers
// that serve a subset of the services (a node-only plugin, a controller
// without snapshots).
//
// # Exit codes
//
// Main returns one of the codes in ExitCodes; docs/cairnctl.md lists the
// same table, and a test keeps the two in step.
package cairnctl
