package mkfsopts_test

import (
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/mkfsopts"
)

// TestParse closes the host-file leak of issue 10: mkfsOptions went to mkfs
// unchecked, so "-d /etc" copied the node's /etc into a pod's volume.
func TestParse(t *testing.T) {
	cases := []struct {
		fs, in string
		want   string // joined with spaces; "" with ok=false means refused
		ok     bool
	}{
		{"ext4", "", "", true},
		{"ext4", "-b 4096 -i 16384 -m 0", "-b 4096 -i 16384 -m 0", true},
		{"ext4", "-E lazy_itable_init=0,lazy_journal_init=0,nodiscard", "-E lazy_itable_init=0,lazy_journal_init=0,nodiscard", true},
		{"ext4", "-O ^metadata_csum,64bit -L data", "-O ^metadata_csum,64bit -L data", true},
		{"ext4", "-J size=64", "-J size=64", true},
		// Options that read or write something other than the device.
		{"ext4", "-b 4096 -d /etc", "", false},
		{"ext4", "-d /root", "", false},
		{"ext4", "-E root_owner=0:0", "", false},
		{"ext4", "-E lazy_itable_init=1,root_owner", "", false},
		{"ext4", "-O journal_dev", "", false},
		{"ext4", "-J device=/dev/sda", "", false},
		{"ext4", "-J size=8,device=/dev/sda", "", false},
		{"ext4", "-L -d", "", false}, // a value must not be read as an option
		{"ext4", "-b", "", false},
		{"ext4", "-b 3000", "", false},
		{"ext4", "/dev/sda", "", false},
		{"ext4", "-F", "", false},
		{"xfs", "-b size=4096 -s size=4096 -m reflink=1,crc=1 -K", "-b size=4096 -s size=4096 -m reflink=1,crc=1 -K", true},
		{"xfs", "-i size=512,sparse=1 -l lazy-count=1 -n ftype=1", "-i size=512,sparse=1 -l lazy-count=1 -n ftype=1", true},
		{"xfs", "-p /etc/protofile", "", false},
		{"xfs", "-l logdev=/dev/sdb", "", false},
		{"xfs", "-r rtdev=/dev/sdc", "", false},
		{"xfs", "-d file=1,name=/etc/passwd", "", false},
		{"xfs", "-m uuid=1234", "", false},
		{"btrfs", "--csum=xxhash -n 16384 -O no-holes -K", "--csum xxhash -n 16384 -O no-holes -K", true},
		{"btrfs", "--rootdir /etc", "", false},
		{"btrfs", "-r /etc", "", false},
		{"btrfs", "--shrink", "", false},
		{"btrfs", "-K=1", "", false},
		{"btrfs", "--nodiscard=yes", "", false},
		{"f2fs", "-l x", "", false},
	}
	for _, c := range cases {
		t.Run(c.fs+" "+c.in, func(t *testing.T) {
			got, err := mkfsopts.Parse(c.fs, c.in)
			if !c.ok {
				if err == nil {
					t.Fatalf("accepted %q as %q", c.in, got)
				}
				if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("error %v is not InvalidArgument", err)
				}
				if !strings.Contains(err.Error(), "mkfsOptions") {
					t.Fatalf("error %q does not name the parameter", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if s := strings.Join(got, " "); s != c.want {
				t.Fatalf("got %q, want %q", s, c.want)
			}
		})
	}
}

// FuzzParse checks that nothing accepted can name a path: no word of the
// result contains '/', and the result parses to itself.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"-b 4096 -d /etc", "-E lazy_itable_init=0", "--csum=xxhash", "-m reflink=1", "-L x -O ^has_journal"} {
		f.Add("ext4", s)
		f.Add("xfs", s)
		f.Add("btrfs", s)
	}
	f.Fuzz(func(t *testing.T, fs, s string) {
		out, err := mkfsopts.Parse(fs, s)
		if err != nil {
			return
		}
		for _, w := range out {
			if strings.ContainsAny(w, "/\x00") {
				t.Fatalf("%q accepted with word %q", s, w)
			}
		}
		again, err := mkfsopts.Parse(fs, strings.Join(out, " "))
		if err != nil || strings.Join(again, " ") != strings.Join(out, " ") {
			t.Fatalf("%q: result %q does not parse to itself: %q %v", s, out, again, err)
		}
	})
}
