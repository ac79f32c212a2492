package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// externalDriver mirrors driverDefinition of k8s.io/kubernetes
// test/e2e/storage/external (v1.34). The suite decodes a driver file
// case-sensitively and silently ignores unknown fields, so a typo turns a
// capability off without a word; this test decodes strictly instead.
type externalDriver struct {
	StorageClass          classSource
	SnapshotClass         classSource
	VolumeAttributesClass classSource
	InlineVolumes         []struct {
		Attributes map[string]string
		Shared     bool
		ReadOnly   bool
	}
	ClientNodeName string
	NodeSelectors  map[string]string
	Timeouts       map[string]string
	DriverInfo     struct {
		Name               string
		SupportedSizeRange struct{ Max, Min string }
		// sets.String: a map, not a list.
		SupportedFsType      map[string]struct{}
		SupportedMountOption map[string]struct{}
		RequiredMountOption  map[string]struct{}
		Capabilities         map[string]bool
		RequiredAccessModes  []string
		TopologyKeys         []string
		NumAllowedTopologies int
	}
}

type classSource struct {
	FromName              bool
	FromFile              string
	FromExistingClassName string
}

// upstreamCapabilities are the Capability constants of
// test/e2e/storage/framework/testdriver.go (v1.34).
var upstreamCapabilities = []string{
	"persistence", "block", "fsGroup", "volumeMountGroup", "exec", "snapshotDataSource",
	"groupSnapshot", "pvcDataSource", "multipods", "RWX", "controllerExpansion",
	"nodeExpansion", "offlineExpansion", "onlineExpansion", "volumeLimits",
	"singleNodeVolume", "topology", "capacity", "FSResizeFromSourceNotSupported",
	"readWriteOncePod", "multiplePVsSameID", "capReadOnlyMany",
}

// TestDriverFiles checks testdriver.yaml and testdriver-image.yaml against
// the suite's format and against the chart they describe. No cluster needed.
func TestDriverFiles(t *testing.T) {
	rendered, err := os.ReadFile(renderedManifests)
	if err != nil {
		t.Fatal(err)
	}
	values, err := os.ReadFile(chartDir + "/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	e2eValues, err := os.ReadFile("values-e2e.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var vals struct {
		VolumeSnapshotClass struct{ Name string } `json:"volumeSnapshotClass"`
	}
	if err := yaml.Unmarshal(values, &vals); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		file, class string
		block       bool
	}{
		{file: "testdriver.yaml", class: "cairn-dir"},
		{file: "testdriver-image.yaml", class: "cairn-images-xfs", block: true},
	} {
		t.Run(tt.file, func(t *testing.T) {
			y, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			j, err := yaml.YAMLToJSON(y)
			if err != nil {
				t.Fatal(err)
			}
			var d externalDriver
			strict, err := json.UnmarshalStrict(j, &d, json.DisallowUnknownFields)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range strict {
				t.Errorf("%s: %v (the suite would ignore this)", tt.file, e)
			}
			if d.DriverInfo.Name != driverName {
				t.Errorf("DriverInfo.Name %q, want %q", d.DriverInfo.Name, driverName)
			}
			for c := range d.DriverInfo.Capabilities {
				if !slices.Contains(upstreamCapabilities, c) {
					t.Errorf("capability %q is not one the suite knows", c)
				}
			}
			caps := d.DriverInfo.Capabilities
			if caps["block"] != tt.block {
				t.Errorf("block: %t, want %t", caps["block"], tt.block)
			}
			if caps["RWX"] || !caps["singleNodeVolume"] || !caps["topology"] {
				t.Errorf("a node-local driver: want RWX false, singleNodeVolume and topology true; got %v", caps)
			}
			if !slices.Equal(d.DriverInfo.TopologyKeys, []string{topologyKey}) {
				t.Errorf("TopologyKeys %v, want [%s]", d.DriverInfo.TopologyKeys, topologyKey)
			}
			if _, err := resource.ParseQuantity(d.DriverInfo.SupportedSizeRange.Min); err != nil {
				t.Errorf("SupportedSizeRange.Min: %v", err)
			}
			// The classes are the chart's.
			if tt.class == "cairn-dir" && !strings.Contains(string(rendered), "kind: StorageClass\nmetadata:\n  name: cairn-dir\n") {
				t.Errorf("%s has no StorageClass cairn-dir", renderedManifests)
			}
			// and the CI install (test/e2e/install.sh) makes each file's class
			if !strings.Contains(string(e2eValues), "name: "+tt.class+"\n") {
				t.Errorf("values-e2e.yaml has no StorageClass %s", tt.class)
			}
			if d.StorageClass.FromExistingClassName != tt.class {
				t.Errorf("StorageClass.FromExistingClassName %q, want %q", d.StorageClass.FromExistingClassName, tt.class)
			}
			if s := d.SnapshotClass.FromExistingClassName; s != "" && s != vals.VolumeSnapshotClass.Name {
				t.Errorf("SnapshotClass %q, the chart makes %q", s, vals.VolumeSnapshotClass.Name)
			}
			if (d.SnapshotClass != classSource{}) != caps["snapshotDataSource"] {
				t.Errorf("SnapshotClass %+v and snapshotDataSource %t disagree", d.SnapshotClass, caps["snapshotDataSource"])
			}
			// Inline volumes: only the attributes cairn accepts (internal/driver/ephemeral.go).
			if len(d.InlineVolumes) == 0 {
				t.Error("no InlineVolumes: the ephemeral inline tests would be skipped")
			}
			for _, iv := range d.InlineVolumes {
				for k, v := range iv.Attributes {
					switch k {
					case "size":
						if _, err := resource.ParseQuantity(v); err != nil {
							t.Errorf("inline size %q: %v", v, err)
						}
					case "pool", "fsType", "mkfsOptions":
					default:
						t.Errorf("inline attribute %q: cairn refuses it", k)
					}
				}
				if iv.Shared {
					t.Error("inline volumes are per pod, not Shared")
				}
			}
		})
	}
}
