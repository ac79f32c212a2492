package cairnctl

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
)

// mapFlag is a repeatable k=v flag: --param a=1 --param b=2.
type mapFlag struct{ m map[string]string }

var _ pflag.Value = (*mapFlag)(nil)

func (f *mapFlag) String() string { return joinMap(f.m, ",") }
func (f *mapFlag) Type() string   { return "key=value" }

func (f *mapFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want key=value", v)
	}
	if f.m == nil {
		f.m = map[string]string{}
	}
	if _, dup := f.m[k]; dup {
		return fmt.Errorf("key %q given twice", k)
	}
	f.m[k] = val
	return nil
}

// topologyFlag is a repeatable topology: each value is one topology of
// comma-separated segments, --requisite-topology zone=a,rack=1.
type topologyFlag struct{ ts []map[string]string }

var _ pflag.Value = (*topologyFlag)(nil)

func (f *topologyFlag) String() string { return joinTopologies(f.ts) }
func (f *topologyFlag) Type() string   { return "key=value[,key=value]" }

func (f *topologyFlag) Set(v string) error {
	t := map[string]string{}
	for _, seg := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(seg, "=")
		if !ok || k == "" {
			return fmt.Errorf("topology segment %q: want key=value", seg)
		}
		if _, dup := t[k]; dup {
			return fmt.Errorf("topology %q names %q twice", v, k)
		}
		t[k] = val
	}
	f.ts = append(f.ts, t)
	return nil
}

func (f *topologyFlag) topologies() []*csi.Topology {
	var out []*csi.Topology
	for _, t := range f.ts {
		out = append(out, &csi.Topology{Segments: t})
	}
	return out
}

// bytesFlag is a size in Kubernetes quantity notation: 10Gi, 500M, 1048576.
type bytesFlag struct {
	n   int64
	set bool
}

var _ pflag.Value = (*bytesFlag)(nil)

func (f *bytesFlag) String() string {
	if !f.set {
		return ""
	}
	return resource.NewQuantity(f.n, resource.BinarySI).String()
}
func (f *bytesFlag) Type() string { return "quantity" }

func (f *bytesFlag) Set(v string) error {
	n, err := parseBytes(v)
	if err != nil {
		return err
	}
	f.n, f.set = n, true
	return nil
}

// parseBytes parses a non-negative quantity such as 10Gi into bytes.
func parseBytes(v string) (int64, error) {
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size such as 10Gi, 500M or 1048576", v)
	}
	if q.Sign() < 0 {
		return 0, fmt.Errorf("size %q is negative", v)
	}
	n, ok := q.AsInt64()
	if !ok {
		// Fractions of a byte round up, as the Kubernetes API does.
		n = q.Value()
	}
	return n, nil
}

// enumFlag accepts one of a fixed set of words and completes them.
type enumFlag struct {
	val      string
	typeName string
	allowed  []string
}

var _ pflag.Value = (*enumFlag)(nil)

// newEnum makes an enum flag; typeName is what help shows as its type
// ("" lists the words, for short lists).
func newEnum(typeName, def string, allowed ...string) *enumFlag {
	if typeName == "" {
		typeName = strings.Join(allowed, "|")
	}
	return &enumFlag{val: def, typeName: typeName, allowed: allowed}
}

func (f *enumFlag) String() string { return f.val }
func (f *enumFlag) Type() string   { return f.typeName }

func (f *enumFlag) Set(v string) error {
	if !slices.Contains(f.allowed, v) {
		return fmt.Errorf("%q: want one of %s", v, strings.Join(f.allowed, ", "))
	}
	f.val = v
	return nil
}

// registerEnum adds an enum flag with shell completion of its words.
func registerEnum(cmd *cobra.Command, f *enumFlag, name, short, usage string) {
	if short != "" {
		cmd.Flags().VarP(f, name, short, usage)
	} else {
		cmd.Flags().Var(f, name, usage)
	}
	cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(f.allowed, cobra.ShellCompDirectiveNoFileComp))
}

// accessModeNames maps flag words (single-node-writer) to CSI modes.
var accessModeNames = func() map[string]csi.VolumeCapability_AccessMode_Mode {
	m := map[string]csi.VolumeCapability_AccessMode_Mode{}
	for v, name := range csi.VolumeCapability_AccessMode_Mode_name {
		mode := csi.VolumeCapability_AccessMode_Mode(v)
		if mode == csi.VolumeCapability_AccessMode_UNKNOWN {
			continue
		}
		m[strings.ToLower(strings.ReplaceAll(name, "_", "-"))] = mode
	}
	return m
}()

func accessModeWords() []string {
	out := make([]string, 0, len(accessModeNames))
	for k := range accessModeNames {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// capabilityFlags are the flags that make one VolumeCapability.
type capabilityFlags struct {
	accessType *enumFlag
	accessMode *enumFlag
	fsType     string
	mountFlags []string
	mountGroup string
}

func addCapabilityFlags(cmd *cobra.Command) *capabilityFlags {
	c := &capabilityFlags{
		accessType: newEnum("", "mount", "mount", "block"),
		accessMode: newEnum("mode", "single-node-writer", accessModeWords()...),
	}
	registerEnum(cmd, c.accessType, "access-type", "", "mount (a filesystem) or block (a raw device)")
	registerEnum(cmd, c.accessMode, "access-mode", "", "CSI access mode: "+strings.Join(accessModeWords(), ", "))
	cmd.Flags().StringVar(&c.fsType, "fs-type", "", "filesystem type for mount access (driver default when empty)")
	cmd.Flags().StringArrayVar(&c.mountFlags, "mount-flag", nil, "a mount option for mount access; repeatable")
	cmd.Flags().StringVar(&c.mountGroup, "volume-mount-group", "", "group ID for the volume's files (drivers with VOLUME_MOUNT_GROUP)")
	cmd.RegisterFlagCompletionFunc("fs-type", cobra.FixedCompletions([]string{"ext4", "xfs", "btrfs"}, cobra.ShellCompDirectiveNoFileComp))
	return c
}

func (c *capabilityFlags) capability() (*csi.VolumeCapability, error) {
	vc := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: accessModeNames[c.accessMode.val]}}
	if c.accessType.val == "block" {
		if c.fsType != "" || len(c.mountFlags) > 0 || c.mountGroup != "" {
			return nil, usagef("--fs-type, --mount-flag and --volume-mount-group apply to --access-type mount only")
		}
		vc.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		return vc, nil
	}
	vc.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{
		FsType: c.fsType, MountFlags: c.mountFlags, VolumeMountGroup: c.mountGroup,
	}}
	return vc, nil
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
