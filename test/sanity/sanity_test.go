// Package sanity runs the official CSI conformance suite (csi-test's
// pkg/sanity) against the real cairn binary, once per configuration: each
// pool type, all services on one socket, and controller and node split
// over two processes.
package sanity

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
	"github.com/cairn-csi/cairn/internal/testlvm"
)

// target is one configuration under test.
type target struct {
	name   string
	fs     string // filesystem to make for the pool ("" = a plain temp dir)
	pools  func(root string) []string
	split  bool // controller and node in separate processes
	block  bool // TestVolumeAccessType=block
	params map[string]string
	needs  []string // binaries that must exist
	// lvm: "thin" or "thick" makes a throwaway VG (internal/testlvm) and
	// passes "VG/tp" or "VG" to pools as root. Device-mapper is only in
	// the VM lane (hack/vm-lane.sh).
	lvm string
	// enforced: the pool must say it enforces sizes (volume context
	// cairn.csi.dev/capacityEnforced=true), or the quota targets would
	// pass without quota.
	enforced bool
	// secrets: every call that carries secrets gets the encryption
	// passphrase (csi-sanity's --csi.secrets).
	secrets bool
	// dm: the target needs device-mapper (LUKS), which only the VM lane has.
	dm bool
}

var targets = []target{
	{name: "dir/all", pools: func(root string) []string { return []string{"default=dir:" + root} }},
	{name: "dir/split", split: true, pools: func(root string) []string { return []string{"default=dir:" + root} }},
	// Image pools: each volume a sparse file on a loop device, formatted ext4
	// (the default) for mount access. The mount and split targets keep the
	// images on ext4 (snapshots are sparse copies), the block target on btrfs
	// (snapshots are reflinks).
	{name: "image/mount", fs: "ext4", needs: []string{"mkfs.ext4"}, pools: func(root string) []string { return []string{"default=image:" + root} }},
	{name: "image/block", fs: "btrfs", block: true, needs: []string{"mkfs.btrfs"}, pools: func(root string) []string { return []string{"default=image:" + root} }},
	{name: "image/split", fs: "ext4", split: true, needs: []string{"mkfs.ext4"}, pools: func(root string) []string { return []string{"default=image:" + root} }},
	// btrfs pool: subvolumes with qgroup limits; snapshots, restores and
	// clones are subvolume snapshots.
	{name: "btrfs/all", fs: "btrfs", needs: []string{"mkfs.btrfs"}, pools: func(root string) []string { return []string{"default=btrfs:" + root} }},
	// The dir pool on a real filesystem, so that snapshots, restores and
	// clones are tree copies on ext4 (sparse copies, no reflink).
	{name: "dir/ext4", fs: "ext4", needs: []string{"mkfs.ext4"}, pools: func(root string) []string { return []string{"default=dir:" + root} }},
	// The dir pool with sizes enforced by project quota: ext4 made with
	// -O quota,project and XFS, both mounted -o prjquota. Kernels without
	// CONFIG_QFMT_V2 or CONFIG_XFS_QUOTA cannot mount them; the VM lane
	// (hack/vm-lane.sh) runs these two.
	// Encrypted directory volumes (fscrypt v2, a key per volume from the
	// CSI secrets), on ext4 with the encrypt feature.
	{name: "dir/fscrypt", fs: "ext4-encrypt", secrets: true, params: map[string]string{"encryption": "true"}, needs: []string{"mkfs.ext4"}, pools: func(root string) []string { return []string{"default=dir:" + root} }},
	// Encrypted image volumes (LUKS2 on a loop device): device-mapper, so
	// the VM lane.
	{name: "image/luks", fs: "ext4", secrets: true, dm: true, params: map[string]string{"encryption": "true"}, needs: []string{"mkfs.ext4", "cryptsetup"}, pools: func(root string) []string { return []string{"default=image:" + root} }},
	{name: "dir/ext4-prjquota", fs: "ext4-prjquota", enforced: true, needs: []string{"mkfs.ext4"}, pools: func(root string) []string { return []string{"default=dir:" + root} }},
	{name: "dir/xfs-prjquota", fs: "xfs", enforced: true, needs: []string{"mkfs.xfs"}, pools: func(root string) []string { return []string{"default=dir:" + root} }},
	// LVM thin pool: each volume a thin LV, formatted ext4 for mount
	// access, the LV itself for block access; snapshots, restores and
	// clones are thin snapshots. Needs device-mapper: the VM lane.
	{name: "lvm/thin-mount", lvm: "thin", enforced: true, needs: []string{"lvcreate", "mkfs.ext4"}, pools: func(root string) []string { return []string{"default=lvm:" + root} }},
	{name: "lvm/thin-block", lvm: "thin", block: true, enforced: true, needs: []string{"lvcreate"}, pools: func(root string) []string { return []string{"default=lvm:" + root} }},
}

// selected reports whether the target runs: $CAIRN_SANITY_TARGETS, when
// set, is a comma-separated list of target names (the VM lane runs only
// the ones the host kernel cannot); the others are skipped as not
// selected.
func selected(name string) bool {
	list := os.Getenv("CAIRN_SANITY_TARGETS")
	return list == "" || slices.Contains(strings.Split(list, ","), name)
}

// allowedSkips are the reasons a spec may be skipped: each names a
// capability Cairn does not advertise (by design: node-local volumes need
// no ControllerPublish, and mutable parameters are not supported).
var allowedSkips = []*regexp.Regexp{
	regexp.MustCompile(`ControllerPublishVolume not supported`),
	regexp.MustCompile(`Controller Publish, UnpublishVolume not supported`),
	regexp.MustCompile(`ControllerModifyVolume not supported`),
	regexp.MustCompile(`Volume Cloning not supported`),
	regexp.MustCompile(`ControllerUnpublishVolume not supported`),
	regexp.MustCompile(`(?i)modify volume not supported`),
	regexp.MustCompile(`SNAPSHOT_ACCESSIBILITY_CONSTRAINTS not supported`),
	regexp.MustCompile(`NodeGetStorageHealth not supported`),
	regexp.MustCompile(`GroupControllerService not supported|VolumeGroupSnapshot not supported|group controller`),
	regexp.MustCompile(`Controller Service not provided`), // the node-only process of a split run
	regexp.MustCompile(`CreateSnapshot not supported|ListSnapshots not supported|GetSnapshot not supported|DeleteSnapshot not supported|CloneVolume not supported|Snapshot not supported`),
	regexp.MustCompile(`ControllerExpandVolume not supported|NodeExpandVolume not supported`),
	regexp.MustCompile(`Single node multi writer`),
	regexp.MustCompile(`^environment: `),  // listed, and the target named, in the report
	regexp.MustCompile(`^not selected: `), // CAIRN_SANITY_TARGETS
}

// configs holds one sanity configuration per target; TestSanity fills
// them in (filesystems, driver processes) before the specs run.
var configs = func() map[string]*sanity.TestConfig {
	m := map[string]*sanity.TestConfig{}
	for _, tg := range targets {
		cfg := sanity.NewTestConfig()
		m[tg.name] = &cfg
	}
	return m
}()

// unavailable says why a target cannot run on this machine; its specs are
// then skipped with that reason, which the report lists.
var unavailable = map[string]string{}

func TestSanity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("csi-sanity needs root: NodeStage and NodePublish make real bind mounts")
	}
	for _, tg := range targets {
		setUp(t, tg, configs[tg.name])
	}
	RegisterFailHandler(Fail)
	RunSpecs(t, "Cairn CSI sanity")
}

func setUp(t *testing.T, tg target, cfg *sanity.TestConfig) {
	if !selected(tg.name) {
		unavailable[tg.name] = "not selected: CAIRN_SANITY_TARGETS=" + os.Getenv("CAIRN_SANITY_TARGETS")
		return
	}
	for _, bin := range tg.needs {
		if _, err := exec.LookPath(bin); err != nil {
			unavailable[tg.name] = "environment: " + bin + " is not installed"
			return
		}
	}
	if tg.dm {
		if _, err := os.Stat("/dev/mapper/control"); err != nil {
			if testfs.VMLane() {
				t.Fatalf("target %s: no device-mapper (CAIRN_VM_LANE=1: the VM lane requires it)", tg.name)
			}
			unavailable[tg.name] = "environment: no device-mapper on this kernel; " + testfs.VMLaneHint
			return
		}
	}
	tmp := t.TempDir()
	root := filepath.Join(tmp, "pool")
	if tg.fs != "" {
		// A kernel that cannot mount the filesystem skips this target's
		// specs, not the whole suite (and fails in the VM lane).
		fs, err := testfs.NewIfSupported(t, tg.fs, 1<<30)
		if err != nil {
			unavailable[tg.name] = "environment: " + err.Error() + "; " + testfs.VMLaneHint
			return
		}
		root = filepath.Join(fs.MountPoint, "pool")
	}
	if tg.lvm != "" {
		if err := testlvm.Available(); err != nil {
			if testfs.VMLane() {
				t.Fatalf("%s: %v (CAIRN_VM_LANE=1: the VM lane requires it)", tg.name, err)
			}
			unavailable[tg.name] = "environment: " + err.Error() + "; " + testfs.VMLaneHint
			return
		}
		thin := int64(0)
		if tg.lvm == "thin" {
			thin = 3 << 30
		}
		root = testlvm.NewVG(t, 4<<30, thin)
		if thin > 0 {
			root += "/" + testlvm.ThinPool
		}
	}
	data := filepath.Join(tmp, "data")
	if tg.split {
		ctl := testdriver.Start(t, testdriver.Options{DataDir: data, Mode: "controller", Pools: tg.pools(root), Env: fastKDF})
		node := testdriver.Start(t, testdriver.Options{DataDir: data, Mode: "node", Pools: tg.pools(root), Env: fastKDF})
		cfg.ControllerAddress = "unix://" + ctl.Socket
		cfg.Address = "unix://" + node.Socket
	} else {
		p := testdriver.Start(t, testdriver.Options{DataDir: data, Pools: tg.pools(root), Env: fastKDF})
		cfg.Address = "unix://" + p.Socket
	}
	if tg.enforced {
		checkEnforced(t, tg.name, cfg)
	}
	cfg.TargetPath = filepath.Join(tmp, "target")
	cfg.StagingPath = filepath.Join(tmp, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 128 << 20
	cfg.IdempotentCount = 10
	cfg.TestVolumeParameters = tg.params
	if tg.secrets {
		cfg.SecretsFile = writeSecrets(t, tmp)
	}
	if tg.block {
		cfg.TestVolumeAccessType = "block"
	}
}

var _ = ReportAfterSuite("skipped specs", func(r Report) {
	var lines []string
	var unexplained []string
	for _, s := range r.SpecReports {
		if s.State != types.SpecStateSkipped || s.LeafNodeType != types.NodeTypeIt {
			continue
		}
		msg := s.Failure.Message
		lines = append(lines, fmt.Sprintf("  %s\n      reason: %s", s.FullText(), msg))
		ok := false
		for _, re := range allowedSkips {
			if re.MatchString(msg) {
				ok = true
			}
		}
		if !ok {
			unexplained = append(unexplained, s.FullText()+": "+msg)
		}
	}
	sort.Strings(lines)
	fmt.Printf("\nsanity: %d specs skipped, each for a capability Cairn does not advertise:\n%s\n", len(lines), strings.Join(lines, "\n"))
	Expect(unexplained).To(BeEmpty(), "specs skipped for a reason that is not an unadvertised capability")
})

var _ = Describe("cairn", func() {
	for _, tg := range targets {
		cfg := configs[tg.name]
		Describe(tg.name, func() {
			BeforeEach(func() {
				if why := unavailable[tg.name]; why != "" {
					Skip(why)
				}
			})
			sanity.GinkgoTest(cfg)
		})
	}
})

// checkEnforced creates and deletes a volume through the target's
// controller and fails unless the pool says it enforces the size.
func checkEnforced(t *testing.T, name string, cfg *sanity.TestConfig) {
	t.Helper()
	addr := cfg.ControllerAddress
	if addr == "" {
		addr = cfg.Address
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctl := csi.NewControllerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:          "enforced-check",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
	})
	if err != nil {
		t.Fatalf("%s: CreateVolume: %v", name, err)
	}
	if got := resp.GetVolume().GetVolumeContext()["cairn.csi.dev/capacityEnforced"]; got != "true" {
		t.Errorf("%s: capacityEnforced = %q, want \"true\": the pool does not enforce sizes", name, got)
	}
	if _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()}); err != nil {
		t.Fatalf("%s: DeleteVolume: %v", name, err)
	}
}

// fastKDF makes LUKS key slots cheap: Argon2id under emulation takes
// seconds per slot (tests only).
var fastKDF = []string{"CAIRN_LUKS_FAST_KDF=1"}

// writeSecrets writes a csi-sanity secrets file that gives every call that
// carries secrets the same encryption passphrase.
func writeSecrets(t *testing.T, dir string) string {
	var b strings.Builder
	for _, call := range []string{"CreateVolumeSecret", "DeleteVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret",
		"NodeStageVolumeSecret", "NodePublishVolumeSecret", "CreateSnapshotSecret", "DeleteSnapshotSecret",
		"ControllerExpandVolumeSecret", "ListSnapshotsSecret", "GetSnapshotSecret"} {
		fmt.Fprintf(&b, "%s:\n  encryptionPassphrase: sanity-passphrase-of-32-bytes!!\n", call)
	}
	p := filepath.Join(dir, "secrets.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
