package mkfsopts_test

import (
	"fmt"

	"github.com/cairn-csi/cairn/internal/mkfsopts"
)

func ExampleParse() {
	args, err := mkfsopts.Parse("ext4", "-b 4096 -E lazy_itable_init=0")
	fmt.Println(args, err == nil)
	_, err = mkfsopts.Parse("ext4", "-d /etc")
	fmt.Println(err != nil)
	// Output:
	// [-b 4096 -E lazy_itable_init=0] true
	// true
}
