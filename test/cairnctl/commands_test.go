package cairnctl

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

// The JSON documents, as scripts see them.
type volumeJSON struct {
	VolumeID           string              `json:"volumeId"`
	CapacityBytes      int64               `json:"capacityBytes"`
	VolumeContext      map[string]string   `json:"volumeContext"`
	AccessibleTopology []map[string]string `json:"accessibleTopology"`
	PublishedNodeIDs   []string            `json:"publishedNodeIds"`
}

type infoJSON struct {
	Name               string   `json:"name"`
	VendorVersion      string   `json:"vendorVersion"`
	PluginCapabilities []string `json:"pluginCapabilities"`
	Controller         struct {
		Served       bool     `json:"served"`
		Capabilities []string `json:"capabilities"`
		Error        string   `json:"error"`
	} `json:"controller"`
	Node struct {
		Served       bool     `json:"served"`
		Capabilities []string `json:"capabilities"`
	} `json:"node"`
	NodeInfo *struct {
		NodeID             string            `json:"nodeId"`
		AccessibleTopology map[string]string `json:"accessibleTopology"`
	} `json:"nodeInfo"`
}

type actionJSON struct {
	Action            string `json:"action"`
	VolumeID          string `json:"volumeId"`
	StagingTargetPath string `json:"stagingTargetPath"`
	TargetPath        string `json:"targetPath"`
}

const topologyKey = "topology.cairn.csi.dev/node"

func TestInfoAndProbe(t *testing.T) {
	_, ep := startCairn(t, testdriver.Options{NodeID: "node-a"})

	var info infoJSON
	okJSON(t, ep, &info, "info")
	if info.Name != "cairn.csi.dev" || !info.Controller.Served || !info.Node.Served {
		t.Errorf("info = %+v", info)
	}
	if !slices.Contains(info.Controller.Capabilities, "CREATE_DELETE_VOLUME") || !slices.Contains(info.Node.Capabilities, "STAGE_UNSTAGE_VOLUME") {
		t.Errorf("capabilities: controller %v, node %v", info.Controller.Capabilities, info.Node.Capabilities)
	}
	if info.NodeInfo == nil || info.NodeInfo.NodeID != "node-a" || info.NodeInfo.AccessibleTopology[topologyKey] != "node-a" {
		t.Errorf("node info = %+v", info.NodeInfo)
	}

	rows := kv(ok(t, ep, "info").stdout)
	if got := rows["NAME"]; !slices.Equal(got, []string{"cairn.csi.dev"}) {
		t.Errorf("table NAME = %v", got)
	}
	if got := rows["CONTROLLER"]; !slices.Equal(got, info.Controller.Capabilities) {
		t.Errorf("table CONTROLLER = %v, want one capability a line, as in JSON: %v", got, info.Controller.Capabilities)
	}
	if got := rows["NODE ID"]; !slices.Equal(got, []string{"node-a"}) {
		t.Errorf("table NODE ID = %v", got)
	}

	var probe struct {
		Ready bool `json:"ready"`
	}
	okJSON(t, ep, &probe, "probe")
	if !probe.Ready {
		t.Error("probe: not ready")
	}
	if got := kv(ok(t, ep, "probe").stdout)["READY"]; !slices.Equal(got, []string{"true"}) {
		t.Errorf("probe table READY = %v", got)
	}
}

func TestInfoNodeOnlyDriver(t *testing.T) {
	_, ep := startCairn(t, testdriver.Options{Mode: "node"})
	var info infoJSON
	okJSON(t, ep, &info, "info") // exit 0: a service not served is not an error
	if info.Controller.Served || !strings.Contains(info.Controller.Error, "Unimplemented") || !info.Node.Served {
		t.Errorf("info of a node-only driver = %+v", info)
	}
	if r := ok(t, ep, "info"); !strings.Contains(r.stdout, "not served (Unimplemented") {
		t.Errorf("table does not say the controller is not served:\n%s", r.stdout)
	}
}

func TestVolumeCommands(t *testing.T) {
	_, ep := startCairn(t, testdriver.Options{NodeID: "node-a"})

	var v volumeJSON
	okJSON(t, ep, &v, "volume", "create", "data-1", "--capacity", "10Mi", "--param", "pool=default",
		"--requisite-topology", topologyKey+"=node-a", "--preferred-topology", topologyKey+"=node-a")
	if !strings.HasPrefix(v.VolumeID, "vol-") || v.CapacityBytes != 10<<20 || v.VolumeContext["cairn.csi.dev/pool"] != "default" {
		t.Fatalf("created %+v", v)
	}
	if len(v.AccessibleTopology) != 1 || v.AccessibleTopology[0][topologyKey] != "node-a" {
		t.Errorf("topology = %v", v.AccessibleTopology)
	}

	t.Run("create is idempotent by name", func(t *testing.T) {
		rows := kv(ok(t, ep, "volume", "create", "data-1", "--capacity", "10Mi", "--param", "pool=default").stdout)
		if !slices.Equal(rows["ID"], []string{v.VolumeID}) || !slices.Equal(rows["CAPACITY"], []string{"10 MiB (10485760 bytes)"}) {
			t.Errorf("second create = %v", rows)
		}
		if !slices.Equal(rows["CONTEXT"], []string{"cairn.csi.dev/capacityEnforced=false", "cairn.csi.dev/pool=default"}) {
			t.Errorf("CONTEXT = %v", rows["CONTEXT"])
		}
	})
	t.Run("create of a taken name", func(t *testing.T) {
		r := ctl(t, ep, "volume", "create", "data-1", "--capacity", "20Mi", "--param", "pool=default")
		if r.code != 5 || !strings.HasPrefix(r.stderr, "cairnctl: AlreadyExists: ") {
			t.Errorf("want exit 5 and AlreadyExists: %v", r)
		}
	})
	t.Run("create refused by the driver", func(t *testing.T) {
		r := ctl(t, ep, "volume", "create", "x", "--param", "colour=blue")
		if r.code != 6 || !strings.Contains(r.stderr, "InvalidArgument: ") || !strings.Contains(r.stderr, `unknown parameter "colour"`) {
			t.Errorf("want exit 6 and the driver's message: %v", r)
		}
	})
	t.Run("list", func(t *testing.T) {
		var vs []volumeJSON
		okJSON(t, ep, &vs, "volume", "list")
		if len(vs) != 1 || vs[0].VolumeID != v.VolumeID || vs[0].CapacityBytes != 10<<20 {
			t.Errorf("list = %+v", vs)
		}
		rows := table(ok(t, ep, "volume", "list").stdout)
		want := [][]string{
			{"ID", "CAPACITY", "SOURCE", "PUBLISHED", "ON", "TOPOLOGY"},
			{v.VolumeID, "10", "MiB", "-", "-", topologyKey + "=node-a"},
		}
		if !slices.EqualFunc(rows, want, slices.Equal) {
			t.Errorf("list table = %q, want %q", rows, want)
		}
	})
	t.Run("get as yaml", func(t *testing.T) {
		var got volumeJSON
		if err := yaml.Unmarshal([]byte(ok(t, ep, "volume", "get", v.VolumeID, "-o", "yaml").stdout), &got); err != nil {
			t.Fatal(err)
		}
		if got.VolumeID != v.VolumeID || got.CapacityBytes != v.CapacityBytes {
			t.Errorf("get -o yaml = %+v", got)
		}
	})
	t.Run("get of an unknown volume", func(t *testing.T) {
		r := ctl(t, ep, "volume", "get", "vol-00000000000000ff")
		if r.code != 4 || r.stderr != "cairnctl: NotFound: volume \"vol-00000000000000ff\": not found\n" || r.stdout != "" {
			t.Errorf("want exit 4 and the gRPC code and message: %v", r)
		}
	})
	t.Run("expand (controller)", func(t *testing.T) {
		var e struct {
			VolumeID   string `json:"volumeId"`
			Controller *struct {
				CapacityBytes         int64 `json:"capacityBytes"`
				NodeExpansionRequired bool  `json:"nodeExpansionRequired"`
			} `json:"controller"`
			NodeSkipped string `json:"nodeSkipped"`
		}
		okJSON(t, ep, &e, "volume", "expand", v.VolumeID, "--capacity", "32Mi")
		if e.Controller == nil || e.Controller.CapacityBytes != 32<<20 || e.NodeSkipped != "no --node-path" {
			t.Errorf("expand = %+v", e)
		}
		var got volumeJSON
		okJSON(t, ep, &got, "volume", "get", v.VolumeID)
		if got.CapacityBytes != 32<<20 {
			t.Errorf("capacity after expand = %d", got.CapacityBytes)
		}
	})
	t.Run("delete, twice", func(t *testing.T) {
		var a actionJSON
		okJSON(t, ep, &a, "volume", "delete", v.VolumeID)
		if a.Action != "deleted" || a.VolumeID != v.VolumeID {
			t.Errorf("delete = %+v", a)
		}
		// The spec makes deleting a missing volume a success.
		if r := ok(t, ep, "volume", "delete", v.VolumeID); r.stdout != "volume "+v.VolumeID+" deleted\n" {
			t.Errorf("second delete printed %q", r.stdout)
		}
		var vs []volumeJSON
		okJSON(t, ep, &vs, "volume", "list")
		if len(vs) != 0 {
			t.Errorf("volumes left: %+v", vs)
		}
	})
}

func TestNodeCommands(t *testing.T) {
	needRoot(t)
	_, ep := startCairn(t, testdriver.Options{NodeID: "node-a"})
	work := t.TempDir()
	staging, target := filepath.Join(work, "staging"), filepath.Join(work, "pod", "target")

	var v volumeJSON
	okJSON(t, ep, &v, "volume", "create", "node-1", "--capacity", "16Mi")
	id := v.VolumeID
	t.Cleanup(func() {
		// Whatever a failure left: take it down before t.TempDir's removal.
		ctl(t, ep, "volume", "unpublish", id, "--target-path", target)
		ctl(t, ep, "volume", "unstage", id, "--staging-path", staging)
	})

	var a actionJSON
	okJSON(t, ep, &a, "volume", "stage", id, "--staging-path", staging, "--volume-context", "cairn.csi.dev/pool=default")
	if a.Action != "staged" || a.StagingTargetPath != staging || !mounted(t, staging) {
		t.Fatalf("stage = %+v, mounted %t", a, mounted(t, staging))
	}
	r := ok(t, ep, "volume", "publish", id, "--staging-path", staging, "--target-path", target)
	if r.stdout != "volume "+id+" published at "+target+"\n" || !mounted(t, target) {
		t.Fatalf("publish printed %q, mounted %t", r.stdout, mounted(t, target))
	}
	// The same bytes are visible through the target and the staging path.
	if err := os.WriteFile(filepath.Join(target, "hello"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(staging, "hello")); err != nil || string(b) != "hi" {
		t.Errorf("read through staging: %q, %v", b, err)
	}

	var got volumeJSON
	okJSON(t, ep, &got, "volume", "get", id)
	if !slices.Equal(got.PublishedNodeIDs, []string{"node-a"}) {
		t.Errorf("published on %v, want [node-a]", got.PublishedNodeIDs)
	}

	var stats struct {
		VolumeID string `json:"volumeId"`
		Usage    []struct {
			Unit             string `json:"unit"`
			Total, Available int64
		} `json:"usage"`
	}
	okJSON(t, ep, &stats, "volume", "stats", id, "--path", target)
	if stats.VolumeID != id || len(stats.Usage) == 0 || stats.Usage[0].Unit != "BYTES" || stats.Usage[0].Total <= 0 {
		t.Errorf("stats = %+v", stats)
	}
	if rows := table(ok(t, ep, "volume", "stats", id, "--path", target).stdout); len(rows) < 2 ||
		!slices.Equal(rows[0], []string{"UNIT", "TOTAL", "USED", "AVAILABLE"}) || rows[1][0] != "BYTES" {
		t.Errorf("stats table = %q", rows)
	}

	t.Run("expand with --node-path", func(t *testing.T) {
		rows := kv(ok(t, ep, "volume", "expand", id, "--capacity", "64Mi", "--node-path", target).stdout)
		// A directory volume grows in the controller alone.
		want := map[string][]string{
			"VOLUME":     {id},
			"CONTROLLER": {"64 MiB (node expansion required: false)"},
			"NODE":       {"skipped: the controller says node expansion is not required"},
		}
		for k, w := range want {
			if !slices.Equal(rows[k], w) {
				t.Errorf("%s = %q, want %q", k, rows[k], w)
			}
		}
	})
	t.Run("delete while published", func(t *testing.T) {
		r := ctl(t, ep, "volume", "delete", id)
		if r.code != 7 || !strings.Contains(r.stderr, "FailedPrecondition: ") {
			t.Errorf("want exit 7 (FailedPrecondition): %v", r)
		}
	})
	t.Run("stage of an unknown volume", func(t *testing.T) {
		r := ctl(t, ep, "volume", "stage", "vol-00000000000000ff", "--staging-path", filepath.Join(work, "other"))
		if r.code != 4 {
			t.Errorf("want exit 4 (NotFound): %v", r)
		}
	})

	okJSON(t, ep, &a, "volume", "unpublish", id, "--target-path", target)
	if a.Action != "unpublished" || mounted(t, target) {
		t.Errorf("unpublish = %+v, still mounted %t", a, mounted(t, target))
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("target still exists after unpublish: %v", err)
	}
	if r := ok(t, ep, "volume", "unstage", id, "--staging-path", staging); r.stdout != "volume "+id+" unstaged at "+staging+"\n" || mounted(t, staging) {
		t.Errorf("unstage printed %q, still mounted %t", r.stdout, mounted(t, staging))
	}
	ok(t, ep, "volume", "delete", id)
}

func TestSnapshotCommands(t *testing.T) {
	_, ep := startCairn(t, testdriver.Options{})
	var info infoJSON
	okJSON(t, ep, &info, "info")

	var v volumeJSON
	okJSON(t, ep, &v, "volume", "create", "snap-src", "--capacity", "8Mi")

	var list []map[string]any
	okJSON(t, ep, &list, "snapshot", "list")
	if len(list) != 0 {
		t.Errorf("snapshots of a new driver: %v", list)
	}
	if r := ctl(t, ep, "snapshot", "get", "snap-00000000000000ff"); r.code != 4 {
		t.Errorf("get of an unknown snapshot: want exit 4: %v", r)
	}

	if !slices.Contains(info.Controller.Capabilities, "CREATE_DELETE_SNAPSHOT") {
		// The pool cannot snapshot: the driver says so, and cairnctl passes
		// the code on.
		r := ctl(t, ep, "snapshot", "create", "s1", "--source-volume", v.VolumeID)
		if r.code == 0 || !strings.HasPrefix(r.stderr, "cairnctl: ") {
			t.Errorf("snapshot create on a pool without snapshots: %v", r)
		}
		return
	}
	var s struct {
		SnapshotID     string `json:"snapshotId"`
		SourceVolumeID string `json:"sourceVolumeId"`
		ReadyToUse     bool   `json:"readyToUse"`
		CreationTime   string `json:"creationTime"`
	}
	okJSON(t, ep, &s, "snapshot", "create", "s1", "--source-volume", v.VolumeID)
	if s.SnapshotID == "" || s.SourceVolumeID != v.VolumeID || s.CreationTime == "" {
		t.Errorf("snapshot = %+v", s)
	}
	rows := table(ok(t, ep, "snapshot", "list", "--source-volume", v.VolumeID).stdout)
	if len(rows) != 2 || rows[1][0] != s.SnapshotID {
		t.Errorf("snapshot list table = %q", rows)
	}
	okJSON(t, ep, &s, "snapshot", "get", s.SnapshotID)
	var restored volumeJSON
	okJSON(t, ep, &restored, "volume", "create", "restored", "--source-snapshot", s.SnapshotID, "--capacity", "8Mi")
	if restored.VolumeID == "" {
		t.Error("restore returned no volume")
	}
	ok(t, ep, "volume", "delete", restored.VolumeID)
	ok(t, ep, "snapshot", "delete", s.SnapshotID)
	okJSON(t, ep, &list, "snapshot", "list")
	if len(list) != 0 {
		t.Errorf("snapshots left: %v", list)
	}
}

func TestUsageAndConnectionExitCodes(t *testing.T) {
	_, ep := startCairn(t, testdriver.Options{})
	missing := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		name     string
		endpoint string
		args     []string
		code     int
		stderr   string
	}{
		{"bad flag", ep, []string{"volume", "list", "--no-such-flag"}, 2, "cairnctl: unknown flag: --no-such-flag"},
		{"bad flag value", ep, []string{"volume", "create", "x", "--access-type", "tape"}, 2, `cairnctl: invalid argument "tape"`},
		{"missing argument", ep, []string{"volume", "delete"}, 2, "cairnctl: requires at least 1 arg(s)"},
		{"unknown command", ep, []string{"volumes", "frob"}, 2, "cairnctl: unknown command"},
		{"no socket", missing, []string{"probe"}, 3, "cairnctl: cannot connect to " + missing},
		{"no socket, any command", missing, []string{"volume", "list"}, 3, "cairnctl: cannot connect to "},
		{"unknown volume", ep, []string{"volume", "get", "vol-00000000000000ff"}, 4, `cairnctl: NotFound: volume "vol-00000000000000ff": not found`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := ctl(t, tc.endpoint, tc.args...)
			if r.code != tc.code || !strings.HasPrefix(r.stderr, tc.stderr) {
				t.Errorf("want exit %d and stderr starting %q: %v", tc.code, tc.stderr, r)
			}
		})
	}
}

func TestCompletion(t *testing.T) {
	_, ep := startCairn(t, testdriver.Options{})
	scripts := map[string]string{"bash": "__start_cairnctl", "zsh": "#compdef cairnctl", "fish": "complete -c cairnctl"}
	for shell, marker := range scripts {
		if r := ok(t, "", "completion", shell); !strings.Contains(r.stdout, marker) {
			t.Errorf("completion %s lacks %q", shell, marker)
		}
	}
	var v volumeJSON
	okJSON(t, ep, &v, "volume", "create", "complete-me")
	// What the shell scripts run on <TAB>: volume IDs come from the driver.
	r := ok(t, "", "__complete", "--endpoint", ep, "volume", "get", "")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 2 || lines[0] != v.VolumeID || lines[1] != ":4" {
		t.Errorf("volume ID completion = %q, want the ID and :4 (no file completion)", lines)
	}
	r = ok(t, "", "__complete", "volume", "create", "x", "--access-mode", "single-node-")
	for _, want := range []string{"single-node-writer", "single-node-reader-only", "single-node-multi-writer"} {
		if !strings.Contains(r.stdout, want+"\n") {
			t.Errorf("access mode completion lacks %s:\n%s", want, r.stdout)
		}
	}
}
