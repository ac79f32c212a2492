package app

import (
	"errors"
	"flag"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseDefaults(t *testing.T) {
	c, err := Parse(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	want := Config{
		Endpoint:              "unix:///run/cairn/csi.sock",
		NodeID:                host,
		DriverName:            "cairn.csi.dev",
		DataDir:               "/var/lib/cairn",
		Mode:                  "all",
		LogFormat:             "text",
		LogLevel:              "info",
		PluginRegistrationDir: "/var/lib/kubelet/plugins_registry",
		ControllerExpansion:   true,
		ShutdownTimeout:       30 * time.Second,
		LVMOverProvisionRatio: 1,
		LVMFullPercent:        90,
	}
	if !configEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

func configEqual(a, b Config) bool {
	if !slices.Equal(a.Pools, b.Pools) {
		return false
	}
	a.Pools, b.Pools = nil, nil
	return reflect.DeepEqual(a, b)
}

func TestParseFlagsAndEnv(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, c Config)
	}{
		{
			name: "flags",
			args: []string{"--endpoint", "tcp://127.0.0.1:1", "--node-id", "n1", "--driver-name", "x.example.com",
				"--data-dir", "/d", "--mode", "node", "--log-format", "json", "--log-level", "debug",
				"--metrics-address", "127.0.0.1:9808", "--controller-expansion=false", "--socket-group", "csi",
				"--max-volumes-per-node", "7", "--shutdown-timeout", "3s", "--tls-cert-file", "/c",
				"--tls-key-file", "/k", "--tls-client-ca-file", "/ca", "--kubelet-registration-path", "/k/csi.sock",
				"--plugin-registration-dir", "/r", "--version",
				"--lvm-thin-overprovision-ratio", "2.5", "--lvm-thin-full-percent", "80"},
			check: func(t *testing.T, c Config) {
				want := Config{Endpoint: "tcp://127.0.0.1:1", NodeID: "n1", DriverName: "x.example.com", DataDir: "/d",
					Mode: "node", LogFormat: "json", LogLevel: "debug", ShowVersion: true, MetricsAddress: "127.0.0.1:9808",
					KubeletRegistrationPath: "/k/csi.sock", PluginRegistrationDir: "/r", ControllerExpansion: false,
					SocketGroup: "csi", MaxVolumesPerNode: 7, ShutdownTimeout: 3 * time.Second,
					TLSCertFile: "/c", TLSKeyFile: "/k", TLSClientCAFile: "/ca",
					LVMOverProvisionRatio: 2.5, LVMFullPercent: 80}
				if !configEqual(c, want) {
					t.Errorf("\n got %+v\nwant %+v", c, want)
				}
			},
		},
		{
			name: "environment twins",
			env: map[string]string{"CAIRN_NODE_ID": "from-env", "CAIRN_DATA_DIR": "/env", "CAIRN_MODE": "controller",
				"CAIRN_CONTROLLER_EXPANSION": "false", "CAIRN_MAX_VOLUMES_PER_NODE": "3", "CAIRN_SHUTDOWN_TIMEOUT": "1m",
				"CAIRN_SOCKET_GROUP": "g", "CAIRN_TLS_CLIENT_CA_FILE": "/ca", "CAIRN_LOG_LEVEL": "warn"},
			check: func(t *testing.T, c Config) {
				if c.NodeID != "from-env" || c.DataDir != "/env" || c.Mode != "controller" || c.ControllerExpansion ||
					c.MaxVolumesPerNode != 3 || c.ShutdownTimeout != time.Minute || c.SocketGroup != "g" ||
					c.TLSClientCAFile != "/ca" || c.LogLevel != "warn" {
					t.Errorf("environment not applied: %+v", c)
				}
			},
		},
		{
			name: "a flag beats its environment twin",
			args: []string{"--node-id", "from-flag", "--pool", "a=dir:/flag"},
			env:  map[string]string{"CAIRN_NODE_ID": "from-env", "CAIRN_POOL": "b=dir:/env", "CAIRN_MODE": "node"},
			check: func(t *testing.T, c Config) {
				if c.NodeID != "from-flag" {
					t.Errorf("NodeID = %q, want the flag's", c.NodeID)
				}
				if want := (poolFlags{{"a", "dir", "/flag"}}); !slices.Equal(c.Pools, want) {
					t.Errorf("Pools = %v, want only the flag's %v", c.Pools, want)
				}
				if c.Mode != "node" {
					t.Errorf("an unrelated twin was not applied: Mode = %q", c.Mode)
				}
			},
		},
		{
			name: "empty environment value is unset",
			env:  map[string]string{"CAIRN_DRIVER_NAME": ""},
			check: func(t *testing.T, c Config) {
				if c.DriverName != "cairn.csi.dev" {
					t.Errorf("DriverName = %q, want the default", c.DriverName)
				}
			},
		},
		{
			name: "repeated pool flags",
			args: []string{"--pool", "fast=dir:/srv/fast", "--pool", "slow=dir:/srv/slow/"},
			check: func(t *testing.T, c Config) {
				want := poolFlags{{"fast", "dir", "/srv/fast"}, {"slow", "dir", "/srv/slow"}}
				if !slices.Equal(c.Pools, want) {
					t.Errorf("Pools = %v, want %v", c.Pools, want)
				}
			},
		},
		{
			name: "CAIRN_POOL is a comma-separated list",
			env:  map[string]string{"CAIRN_POOL": "fast=dir:/srv/fast, slow=dir:/srv/slow"},
			check: func(t *testing.T, c Config) {
				want := poolFlags{{"fast", "dir", "/srv/fast"}, {"slow", "dir", "/srv/slow"}}
				if !slices.Equal(c.Pools, want) {
					t.Errorf("Pools = %v, want %v", c.Pools, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.args, env(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantMsg string // in the error
	}{
		{name: "unknown flag", args: []string{"--no-such-flag"}, wantMsg: "no-such-flag"},
		{name: "positional argument", args: []string{"serve"}, wantMsg: "unexpected arguments"},
		{name: "bad bool flag", args: []string{"--controller-expansion=maybe"}, wantMsg: "controller-expansion"},
		{name: "bad duration flag", args: []string{"--shutdown-timeout", "soon"}, wantMsg: "shutdown-timeout"},
		{name: "bad pool flag", args: []string{"--pool", "nope"}, wantMsg: "name=type:path"},
		{name: "bad bool in environment", env: map[string]string{"CAIRN_CONTROLLER_EXPANSION": "maybe"}, wantMsg: "CAIRN_CONTROLLER_EXPANSION"},
		{name: "bad int in environment", env: map[string]string{"CAIRN_MAX_VOLUMES_PER_NODE": "many"}, wantMsg: "CAIRN_MAX_VOLUMES_PER_NODE"},
		{name: "bad pool in environment", env: map[string]string{"CAIRN_POOL": "a=dir:/x,B=dir:/y"}, wantMsg: "CAIRN_POOL"},
		{name: "duplicate pool in environment", env: map[string]string{"CAIRN_POOL": "a=dir:/x,a=dir:/y"}, wantMsg: "given twice"},
		{
			name:    "every bad twin is reported",
			env:     map[string]string{"CAIRN_CONTROLLER_EXPANSION": "maybe", "CAIRN_SHUTDOWN_TIMEOUT": "soon"},
			wantMsg: "CAIRN_SHUTDOWN_TIMEOUT",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.args, env(tt.env), io.Discard)
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("err = %v, want it to mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestParseHelp(t *testing.T) {
	var out strings.Builder
	_, err := Parse([]string{"--help"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: err = %v, want flag.ErrHelp", err)
	}
	// The usage lists every pool type, so that tools (and test/crash) can
	// tell what this build supports.
	for _, typ := range PoolTypes() {
		if !strings.Contains(out.String(), typ) {
			t.Errorf("usage does not list pool type %q:\n%s", typ, out.String())
		}
	}
	if !strings.Contains(out.String(), "types: "+strings.Join(PoolTypes(), ", ")) {
		t.Errorf("usage does not carry the pool type list %q", strings.Join(PoolTypes(), ", "))
	}
}

func TestEnvName(t *testing.T) {
	tests := map[string]string{
		"node-id":                   "CAIRN_NODE_ID",
		"pool":                      "CAIRN_POOL",
		"tls-client-ca-file":        "CAIRN_TLS_CLIENT_CA_FILE",
		"kubelet-registration-path": "CAIRN_KUBELET_REGISTRATION_PATH",
	}
	for in, want := range tests {
		if got := envName(in); got != want {
			t.Errorf("envName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEveryFlagHasATwin: each flag's twin is honoured, so none is
// forgotten when a flag is added.
func TestEveryFlagHasATwin(t *testing.T) {
	values := map[string]string{} // every flag named in the usage
	var out strings.Builder
	Parse([]string{"--help"}, env(nil), &out)
	for _, line := range strings.Split(out.String(), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "-") {
			continue
		}
		name := strings.Fields(strings.TrimPrefix(line, "-"))[0]
		values[name] = ""
	}
	if len(values) < 10 {
		t.Fatalf("found only %d flags in the usage:\n%s", len(values), out.String())
	}
	// Candidate values by flag type; the first that parses and changes the
	// config proves the twin is wired.
	candidates := []string{"/twin-value", "true", "false", "9", "7s", "p=dir:/p", "p:ext4=-m 0"}
	base, _ := Parse(nil, env(nil), io.Discard)
	for name := range values {
		wired := false
		for _, v := range candidates {
			c, err := Parse(nil, env(map[string]string{envName(name): v}), io.Discard)
			if err == nil && !configEqual(c, base) {
				wired = true
				break
			}
		}
		if !wired {
			t.Errorf("flag --%s: no value of its twin %s changed the config", name, envName(name))
		}
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		format, level string
		ok            bool
	}{
		{"text", "info", true}, {"json", "debug", true}, {"json", "warn", true}, {"text", "error", true},
		{"xml", "info", false}, {"text", "loud", false}, {"", "info", false},
	}
	for _, tt := range tests {
		_, err := newLogger(tt.format, tt.level, io.Discard)
		if (err == nil) != tt.ok {
			t.Errorf("newLogger(%q, %q) err = %v, want ok=%v", tt.format, tt.level, err, tt.ok)
		}
	}
}
