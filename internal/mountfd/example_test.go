package mountfd_test

import (
	"fmt"

	"github.com/cairn-csi/cairn/internal/mountfd"
)

func ExampleParseOptions() {
	attrs, fsOpts, err := mountfd.ParseOptions("ext4", []string{"ro", "noatime", "discard"})
	fmt.Println(attrs.ReadOnly, attrs.Atime, fsOpts, err)
	_, _, err = mountfd.ParseOptions("xfs", []string{"logdev=/dev/sdb"})
	fmt.Println(err != nil)
	// Output:
	// true noatime [discard] <nil>
	// true
}
