package driver

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/mountfd"
	"github.com/cairn-csi/cairn/internal/store"
)

// The fuzz targets check properties, not examples: whatever the input,
// validation never panics, what it accepts is safe to use as a file name
// or path, and what it refuses is refused with the right class.

// assertSafeID fails unless id is safe as one path element.
func assertSafeID(t *testing.T, what, id string) {
	t.Helper()
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\\\x00") || strings.Contains(id, "..") ||
		!utf8.ValidString(id) || len(id) > maxStringBytes {
		t.Fatalf("%s: accepted unsafe ID %q", what, id)
	}
}

// assertSafePath fails unless p is absolute, has no '..' element and no NUL.
func assertSafePath(t *testing.T, what, p string) {
	t.Helper()
	if !filepath.IsAbs(p) || strings.ContainsRune(p, 0) || len(p) > maxPathBytes {
		t.Fatalf("%s: accepted path %q", what, p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			t.Fatalf("%s: accepted path %q with a '..' element", what, p)
		}
	}
	// Whatever Clean makes of it stays where it was pointed.
	if c := filepath.Clean(p); !filepath.IsAbs(c) || strings.Contains("/"+c+"/", "/../") {
		t.Fatalf("%s: path %q cleans to %q", what, p, c)
	}
}

// assertClass fails unless err is of one of the classes.
func assertClass(t *testing.T, what string, err error, classes ...error) {
	t.Helper()
	for _, c := range classes {
		if errors.Is(err, c) {
			return
		}
	}
	t.Fatalf("%s: err = %v, want one of the classes %v", what, err, classes)
}

// assertCode fails unless err is a status with one of codes and an empty
// details list, and a message that is valid UTF-8.
func assertCode(t *testing.T, what string, err error, want ...codes.Code) {
	t.Helper()
	err = atEdge(err)
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: %v is not a status error", what, err)
	}
	if len(st.Proto().GetDetails()) != 0 {
		t.Fatalf("%s: status has details", what)
	}
	if !utf8.ValidString(st.Message()) {
		t.Fatalf("%s: status message is not valid UTF-8: %q", what, st.Message())
	}
	for _, c := range want {
		if st.Code() == c {
			return
		}
	}
	t.Fatalf("%s: code %v (%v), want one of %v", what, st.Code(), err, want)
}

func FuzzRequireID(f *testing.F) {
	for _, s := range []string{"vol-0123456789abcdef", "", ".", "..", "a/b", "a\\b", "a..b", "a\x00", "\xff", strings.Repeat("a", 129), "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := requireID("volume_id", id)
		if err != nil {
			assertClass(t, "requireID", err, errdefs.ErrInvalidArgument)
			return
		}
		assertSafeID(t, "requireID", id)
	})
}

func FuzzRequirePath(f *testing.F) {
	for _, s := range []string{"/var/lib/kubelet/x", "/", "", "rel", "/a/../b", "/..", "/a/..b", "/a\x00", "//a//", "/a/./b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := requirePath("target_path", p)
		if err != nil {
			assertClass(t, "requirePath", err, errdefs.ErrInvalidArgument)
		} else {
			assertSafePath(t, "requirePath", p)
		}
		err = requireVolumePath("volume_path", p)
		if err != nil {
			assertClass(t, "requireVolumePath", err, errdefs.ErrInvalidArgument, errdefs.ErrNotFound)
			return
		}
		assertSafePath(t, "requireVolumePath", p)
		if filepath.Clean(p) != p {
			t.Fatalf("requireVolumePath accepted unclean %q", p)
		}
	})
}

func FuzzCheckMountFlags(f *testing.F) {
	for _, s := range [][2]string{{"ro", "noatime"}, {"bind", ""}, {"ro,bind", "x"}, {"x-mount.mkdir=0700", "a"}, {"loop=/dev/loop0", "b"}, {"a b", "c"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		flags := []string{a, b}
		err := checkMountFlags(flags)
		if err != nil {
			assertClass(t, "checkMountFlags", err, errdefs.ErrInvalidArgument)
			return
		}
		for _, fl := range flags {
			if fl == "" || strings.ContainsAny(fl, ", \t\n\x00") || len(fl) > maxStringBytes || !utf8.ValidString(fl) {
				t.Fatalf("accepted flag %q", fl)
			}
			switch strings.SplitN(fl, "=", 2)[0] {
			case "bind", "rbind", "remount", "move", "loop", "x-mount.mkdir":
				t.Fatalf("accepted forbidden flag %q", fl)
			}
		}
		// Joined into the mount(2) data string, the filesystem options that
		// pass the allow-list are still the same options: nothing was
		// smuggled.
		for _, fs := range []string{"", "ext4", "xfs", "btrfs"} {
			_, fsOpts, err := mountfd.ParseOptions(fs, flags)
			if err != nil {
				continue
			}
			if got := strings.Split(strings.Join(fsOpts, ","), ","); len(fsOpts) > 0 && len(got) != len(fsOpts) {
				t.Fatalf("flags %q become %d %s options", flags, len(got), fs)
			}
		}
	})
}

func FuzzParseCreateParams(f *testing.F) {
	f.Add("pool", "fast", "csi.storage.k8s.io/fstype", "ext4")
	f.Add("mkfsOptions", "-m 0", "csi.storage.k8s.io/pvc/name", "pvc")
	f.Add("replicas", "3", "", "")
	f.Add("csi.storage.k8s.io/fstype", "ntfs", "pool", "\x00")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		params := map[string]string{k1: v1, k2: v2}
		p, err := parseCreateParams(params)
		if err != nil {
			assertClass(t, "parseCreateParams", err, errdefs.ErrInvalidArgument)
			return
		}
		for k, v := range params {
			switch {
			case k == ParamPool:
				if p.pool != v {
					t.Fatalf("pool %q parsed as %q", v, p.pool)
				}
			case k == ParamFsType:
				if p.fsType != v {
					t.Fatalf("fstype %q parsed as %q", v, p.fsType)
				}
			case k == ParamMkfsOptions:
			case k8sMetadataParams[k]:
			default:
				t.Fatalf("unknown parameter %q accepted", k)
			}
			if strings.ContainsRune(k+v, 0) || !utf8.ValidString(k+v) {
				t.Fatalf("parameter %q=%q with NUL or bad UTF-8 accepted", k, v)
			}
		}
		switch p.fsType {
		case "", "ext4", "xfs", "btrfs":
		default:
			t.Fatalf("fs type %q accepted", p.fsType)
		}
	})
}

// FuzzCreateVolumeRequest drives CreateVolume itself with a fake pool that
// fails every create: the request either is refused with a client-error
// code, or reaches the pool — and then its fields obey every rule.
func FuzzCreateVolumeRequest(f *testing.F) {
	f.Add("pvc-1", "ext4", "noatime", "pool", "default", int32(1), false, int64(1<<20), int64(0), "")
	f.Add("", "", "", "", "", int32(0), false, int64(0), int64(0), "")
	f.Add("b", "", "", "csi.storage.k8s.io/fstype", "xfs", int32(7), true, int64(-1), int64(5), "snap-0000000000000000")
	f.Add("../../etc", "ntfs", "bind", "pool", "nope", int32(5), false, int64(10), int64(1), "../x")
	d, pool, _ := newTestDriver(f)
	f.Fuzz(func(t *testing.T, name, fsType, flag, pk, pv string, mode int32, block bool, required, limit int64, srcSnap string) {
		c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_Mode(mode)}}
		if block {
			c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		} else {
			var flags []string
			if flag != "" {
				flags = []string{flag}
			}
			c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: flags}}
		}
		req := &csi.CreateVolumeRequest{
			Name:               name,
			VolumeCapabilities: []*csi.VolumeCapability{c},
			Parameters:         map[string]string{pk: pv},
			CapacityRange:      &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit},
		}
		if srcSnap != "" {
			req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: srcSnap}}}
		}
		before := len(pool.creates)
		_, err := d.CreateVolume(context.Background(), req)
		if n := d.locks.Len(); n != 0 {
			t.Fatalf("%d locks held after CreateVolume returned", n)
		}
		if len(pool.creates) == before {
			// Refused before the pool: a client error, never Internal.
			assertCode(t, "CreateVolume", err, codes.InvalidArgument, codes.OutOfRange, codes.NotFound, codes.ResourceExhausted)
			return
		}
		assertCode(t, "CreateVolume reaching the pool", err, codes.Internal)
		if id := pool.creates[len(pool.creates)-1]; !volumeIDPattern.MatchString(id) {
			t.Fatalf("the pool got ID %q, not one the driver made", id)
		}
		if err := requireString("name", name); err != nil {
			t.Fatalf("name %q reached the pool: %v", name, err)
		}
		if err := checkCapability("c", c); err != nil {
			t.Fatalf("capability reached the pool: %v", err)
		}
		if _, err := parseCreateParams(req.Parameters); err != nil {
			t.Fatalf("parameters reached the pool: %v", err)
		}
		spec := pool.specs[len(pool.specs)-1]
		if spec.CapacityBytes < required || spec.CapacityBytes <= 0 || (limit > 0 && spec.CapacityBytes > limit) {
			t.Fatalf("pool asked for %d bytes for range [%d, %d]", spec.CapacityBytes, required, limit)
		}
	})
}

// FuzzNodePublishRequest drives NodePublishVolume with a store that has no
// volumes and a fake mounter: every request fails, as InvalidArgument
// when malformed and NotFound only when every field is well formed.
func FuzzNodePublishRequest(f *testing.F) {
	f.Add("vol-0123456789abcdef", "/var/lib/kubelet/pods/p/volumes/v/mount", "/var/lib/kubelet/plugins/s", "ro", int32(1), false, "k", "v")
	f.Add("..", "/t", "/s", "", int32(1), false, "", "")
	f.Add("v", "/t/../../etc", "/s", "", int32(1), true, "", "")
	f.Add("v", "/t", "rel", "bind", int32(2), false, "csi.storage.k8s.io/ephemeral", "true")
	d, pool, _ := newTestDriver(f)
	f.Fuzz(func(t *testing.T, id, target, staging, flag string, mode int32, readonly bool, ck, cv string) {
		var flags []string
		if flag != "" {
			flags = []string{flag}
		}
		req := &csi.NodePublishVolumeRequest{
			VolumeId:          id,
			TargetPath:        target,
			StagingTargetPath: staging,
			Readonly:          readonly,
			VolumeCapability: &csi.VolumeCapability{
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_Mode(mode)},
				AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
			},
			VolumeContext: map[string]string{ck: cv},
		}
		before := len(pool.creates)
		_, err := d.NodePublishVolume(context.Background(), req)
		if n := d.locks.Len(); n != 0 {
			t.Fatalf("%d locks held after NodePublishVolume returned", n)
		}
		if req.GetVolumeContext()[ephemeralContextKey] == "true" {
			// An inline volume: no state dir in this driver, so refused
			// before anything is created.
			if len(pool.creates) != before {
				t.Fatal("an ephemeral publish reached the pool")
			}
			assertCode(t, "ephemeral NodePublishVolume", err, codes.InvalidArgument, codes.FailedPrecondition)
			return
		}
		assertCode(t, "NodePublishVolume", err, codes.InvalidArgument, codes.NotFound)
		if status.Code(atEdge(err)) == codes.NotFound {
			assertSafeID(t, "volume_id", id)
			assertSafePath(t, "target_path", target)
			assertSafePath(t, "staging_target_path", staging)
			if filepath.Clean(target) == filepath.Clean(staging) {
				t.Fatalf("target %q and staging %q are the same and passed", target, staging)
			}
		}
	})
}

// FuzzListTokens: ListVolumes and ListSnapshots accept only tokens they
// could have issued (ABORTED otherwise, as the spec asks), never more
// entries than max_entries, and a next token that is itself acceptable.
func FuzzListTokens(f *testing.F) {
	f.Add("", int32(0), "", "")
	f.Add("vol-0000000000000002", int32(2), "", "")
	f.Add("snap-0000000000000001", int32(1), "snap-0000000000000001", "vol-0000000000000001")
	f.Add("vol-", int32(-1), "x", "y")
	f.Add("VOL-0000000000000002", int32(1), "", "")
	f.Add("vol-0000000000000002\n", int32(1), "", "")
	d, _, st := newTestDriver(f)
	err := st.Update(context.Background(), func(tx *store.Tx) error {
		for _, id := range []string{"0000000000000001", "0000000000000002", "00000000000000ff", "0123456789abcdef"} {
			if err := tx.PutVolume(store.Volume{ID: "vol-" + id, Name: "n" + id, Pool: "default", AccessType: "mount"}); err != nil {
				return err
			}
			if err := tx.PutSnapshot(store.Snapshot{ID: "snap-" + id, Name: "s" + id, SourceVolumeID: "vol-0000000000000001", Pool: "default"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, token string, max int32, snapID, srcVol string) {
		ctx := context.Background()
		vr, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token, MaxEntries: max})
		switch {
		case max < 0:
			assertCode(t, "ListVolumes", err, codes.InvalidArgument)
		case token != "" && !volumeIDPattern.MatchString(token):
			assertCode(t, "ListVolumes", err, codes.Aborted)
		case err != nil:
			t.Fatalf("ListVolumes(%q, %d): %v", token, max, err)
		default:
			if max > 0 && len(vr.GetEntries()) > int(max) {
				t.Fatalf("ListVolumes max %d returned %d", max, len(vr.GetEntries()))
			}
			if nt := vr.GetNextToken(); nt != "" && !volumeIDPattern.MatchString(nt) {
				t.Fatalf("ListVolumes issued token %q it would refuse", nt)
			}
		}

		sr, err := d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: token, MaxEntries: max, SnapshotId: snapID, SourceVolumeId: srcVol})
		switch {
		case max < 0:
			assertCode(t, "ListSnapshots", err, codes.InvalidArgument)
		case token != "" && !snapshotIDPattern.MatchString(token):
			assertCode(t, "ListSnapshots", err, codes.Aborted)
		case err != nil:
			t.Fatalf("ListSnapshots(%q, %d, %q, %q): %v", token, max, snapID, srcVol, err)
		default:
			if max > 0 && len(sr.GetEntries()) > int(max) {
				t.Fatalf("ListSnapshots max %d returned %d", max, len(sr.GetEntries()))
			}
			if nt := sr.GetNextToken(); nt != "" && !snapshotIDPattern.MatchString(nt) {
				t.Fatalf("ListSnapshots issued token %q it would refuse", nt)
			}
			for _, e := range sr.GetEntries() {
				if snapID != "" && e.GetSnapshot().GetSnapshotId() != snapID {
					t.Fatalf("filter snapshot_id %q returned %q", snapID, e.GetSnapshot().GetSnapshotId())
				}
				if srcVol != "" && e.GetSnapshot().GetSourceVolumeId() != srcVol {
					t.Fatalf("filter source_volume_id %q returned %q", srcVol, e.GetSnapshot().GetSourceVolumeId())
				}
			}
		}
	})
}
