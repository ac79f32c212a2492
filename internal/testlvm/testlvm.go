// Package testlvm owns the throwaway LVM volume groups tests run LVM pools
// on: a physical volume on a loop-attached sparse file under the test's
// temp dir, a VG with a unique name on it, optionally a thin pool, and an
// untagged "foreign" LV that Cairn must never touch. Everything is removed
// when the test ends. It never touches a real disk.
//
// The host this project is developed on has no device-mapper, so these
// tests skip there, naming the VM lane (hack/vm-lane.sh), and fail in it
// (CAIRN_VM_LANE=1) if anything they need is missing.
package testlvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/loopdev"
	"github.com/cairn-csi/cairn/internal/testfs"
)

// ThinPool is the thin pool's name in a VG made with a thin pool.
const ThinPool = "tp"

// Foreign is the untagged LV every VG gets: it stands for the LVs of
// other users of the VG, and keeps /dev/<vg> present.
const Foreign = "foreign"

// Available says why LVM tests cannot run here (nil: they can): no root,
// no loop devices, no device-mapper, or no lvm2 tools.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("LVM tests need root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("LVM tests need loop devices: %w", err)
	}
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		return fmt.Errorf("LVM needs device-mapper, which this kernel lacks (%w)", err)
	}
	for _, tool := range []string{"lvcreate", "vgcreate", "pvcreate", "thin_check"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("LVM tests need %s (lvm2, thin-provisioning-tools)", tool)
		}
	}
	return nil
}

// Require skips the test unless it runs as root with loop devices,
// device-mapper and lvm2, which in the VM lane is a failure instead.
func Require(t testing.TB) {
	t.Helper()
	testfs.RequireRoot(t)
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		testfs.SkipKernel(t, "LVM needs device-mapper, which this kernel lacks (%v)", err)
	}
	for _, tool := range []string{"lvcreate", "vgcreate", "pvcreate", "thin_check"} {
		if _, err := exec.LookPath(tool); err != nil {
			testfs.SkipKernel(t, "LVM tests need %s (lvm2, thin-provisioning-tools)", tool)
		}
	}
}

// Run runs an lvm2 (or other) command with LC_ALL=C and fails the test
// with its output if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := run(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// NewVG makes a VG of about size bytes on a loop file and returns its
// name. With thinBytes > 0 it also has a thin pool ThinPool of that size.
func NewVG(t testing.TB, size, thinBytes int64) string {
	t.Helper()
	Require(t)
	img := filepath.Join(t.TempDir(), "pv.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev, err := loopdev.Attach(context.Background(), img, loopdev.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	vg := "cairntest" + hex.EncodeToString(rnd[:])
	t.Cleanup(func() {
		// Only this VG's LVs and this PV: nothing else on the machine.
		if out, err := run("vgremove", "--force", "--force", "--yes", vg); err != nil {
			t.Errorf("vgremove %s: %v\n%s", vg, err, out)
		}
		run("pvremove", "--yes", dev.Path)
		if err := loopdev.Detach(context.Background(), dev.Path); err != nil {
			t.Errorf("detach %s: %v", dev.Path, err)
		}
	})
	Run(t, "pvcreate", "--quiet", "--yes", dev.Path)
	Run(t, "vgcreate", "--quiet", vg, dev.Path)
	if thinBytes > 0 {
		Run(t, "lvcreate", "--quiet", "--yes", "--type", "thin-pool", "--size", strconv.FormatInt(thinBytes, 10)+"b", "--name", ThinPool, vg)
		// A new thin pool is active on its own, with a /dev/<vg> node; once
		// thin LVs come and go it is active only behind them, without one.
		// Start in that second state, so /dev/<vg> lists only LVs.
		Run(t, "lvchange", "--quiet", "--activate", "n", vg+"/"+ThinPool)
	}
	Run(t, "lvcreate", "--quiet", "--yes", "--size", "4m", "--name", Foreign, vg)
	return vg
}
