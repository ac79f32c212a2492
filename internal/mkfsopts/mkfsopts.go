// Package mkfsopts owns which mkfs options a StorageClass may set. Options
// arrive through the CSI API (StorageClass parameters, and the volume
// context a node is handed), so they are parsed against a closed list per
// filesystem: sizes, ratios, feature switches and lazy initialisation. An
// option that makes mkfs read or write anything but the device it formats
// (ext4 -d, -E root_owner, -O journal_dev, -J device=; xfs -p, -l logdev=,
// -r rtdev=; btrfs --rootdir) is not on any list and is refused, as is
// anything unknown. Options an administrator trusts beyond this list are set
// per pool on the node, never through the API.
package mkfsopts

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// value checks an option's argument.
type value func(string) bool

// subopts checks a comma-separated list of name[=value] sub-options.
func subopts(allowed map[string]value) value {
	return func(v string) bool {
		if v == "" {
			return false
		}
		for _, so := range strings.Split(v, ",") {
			name, val, hasVal := strings.Cut(so, "=")
			check, ok := allowed[name]
			if !ok || (hasVal && val == "") {
				return false
			}
			if !hasVal {
				val = ""
			}
			if !check(val) {
				return false
			}
		}
		return true
	}
}

// features checks a comma-separated list of feature names, each possibly
// negated with '^'.
func features(names ...string) value {
	ok := map[string]bool{}
	for _, n := range names {
		ok[n] = true
	}
	return func(v string) bool {
		if v == "" {
			return false
		}
		for _, f := range strings.Split(v, ",") {
			if !ok[strings.TrimPrefix(f, "^")] {
				return false
			}
		}
		return true
	}
}

func none(v string) bool { return v == "" }

func uintIn(lo, hi uint64) value {
	return func(v string) bool {
		n, err := strconv.ParseUint(v, 10, 64)
		return err == nil && n >= lo && n <= hi
	}
}

func powerOf2In(lo, hi uint64) value {
	return func(v string) bool {
		n, err := strconv.ParseUint(v, 10, 64)
		return err == nil && n >= lo && n <= hi && n&(n-1) == 0
	}
}

func oneOf(vals ...string) value {
	return func(v string) bool {
		for _, x := range vals {
			if v == x {
				return true
			}
		}
		return false
	}
}

// byteSize is a byte count with an optional unit suffix, as mkfs.xfs and
// mkfs.btrfs take them.
var byteSizePattern = regexp.MustCompile(`^[0-9]{1,12}[kKmMgG]?$`)

func byteSize(v string) bool { return byteSizePattern.MatchString(v) }

// label is a filesystem label: short, and nothing a shell or mkfs could
// read as anything else.
var labelPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,15}$`)

func label(v string) bool { return labelPattern.MatchString(v) }

// option is one allowed option: takes says whether it takes a value.
type option struct {
	takes bool
	check value
}

var flagOpt = option{check: none}

func with(check value) option { return option{takes: true, check: check} }

var allowed = map[string]map[string]option{
	"ext4": {
		"-b": with(oneOf("1024", "2048", "4096")),
		"-i": with(uintIn(1024, 67108864)),
		"-I": with(oneOf("128", "256", "512", "1024")),
		"-m": with(uintIn(0, 50)),
		"-N": with(uintIn(1, 1<<32-1)),
		"-T": with(oneOf("default", "ext4", "small", "floppy", "news", "largefile", "largefile4", "huge", "big")),
		"-L": with(label),
		"-j": flagOpt,
		"-J": with(subopts(map[string]value{"size": uintIn(1, 10240)})),
		"-E": with(subopts(map[string]value{
			"lazy_itable_init": oneOf("0", "1"), "lazy_journal_init": oneOf("0", "1"),
			"discard": none, "nodiscard": none, "stride": uintIn(1, 1<<30), "stripe_width": uintIn(1, 1<<30),
			"stripe-width": uintIn(1, 1<<30), "packed_meta_blocks": oneOf("0", "1"), "num_backup_sb": oneOf("0", "1", "2"),
		})),
		"-O": with(features("has_journal", "metadata_csum", "metadata_csum_seed", "64bit", "extent", "extents",
			"huge_file", "flex_bg", "dir_nlink", "extra_isize", "sparse_super", "sparse_super2", "uninit_bg",
			"dir_index", "filetype", "resize_inode", "inline_data", "large_file", "quota", "project", "encrypt",
			"bigalloc", "mmp", "orphan_file", "large_dir", "ea_inode")),
	},
	"xfs": {
		"-b": with(subopts(map[string]value{"size": powerOf2In(512, 65536)})),
		"-s": with(subopts(map[string]value{"size": powerOf2In(512, 32768)})),
		"-i": with(subopts(map[string]value{"size": powerOf2In(256, 2048), "maxpct": uintIn(0, 100),
			"sparse": oneOf("0", "1"), "perblock": uintIn(1, 1<<16), "align": oneOf("0", "1"), "nrext64": oneOf("0", "1")})),
		"-m": with(subopts(map[string]value{"crc": oneOf("0", "1"), "reflink": oneOf("0", "1"), "finobt": oneOf("0", "1"),
			"bigtime": oneOf("0", "1"), "inobtcount": oneOf("0", "1"), "rmapbt": oneOf("0", "1")})),
		"-d": with(subopts(map[string]value{"agcount": uintIn(1, 1<<20), "agsize": byteSize, "su": byteSize,
			"sw": uintIn(1, 1<<16), "sunit": uintIn(0, 1<<30), "swidth": uintIn(0, 1<<30)})),
		"-l": with(subopts(map[string]value{"size": byteSize, "su": byteSize, "sunit": uintIn(0, 1<<30),
			"lazy-count": oneOf("0", "1"), "version": oneOf("2")})),
		"-n": with(subopts(map[string]value{"size": powerOf2In(512, 65536), "ftype": oneOf("1")})),
		"-L": with(label),
		"-K": flagOpt,
	},
	"btrfs": {
		"-n":                 with(powerOf2In(4096, 65536)),
		"--nodesize":         with(powerOf2In(4096, 65536)),
		"-s":                 with(powerOf2In(4096, 65536)),
		"--sectorsize":       with(powerOf2In(4096, 65536)),
		"-L":                 with(label),
		"--label":            with(label),
		"-m":                 with(oneOf("single", "dup")),
		"--metadata":         with(oneOf("single", "dup")),
		"-d":                 with(oneOf("single", "dup")),
		"--data":             with(oneOf("single", "dup")),
		"-O":                 with(features("no-holes", "free-space-tree", "block-group-tree", "extref", "skinny-metadata", "quota", "squota")),
		"--features":         with(features("no-holes", "free-space-tree", "block-group-tree", "extref", "skinny-metadata", "quota", "squota")),
		"-R":                 with(features("quota", "free-space-tree")),
		"--runtime-features": with(features("quota", "free-space-tree")),
		"--csum":             with(oneOf("crc32c", "xxhash", "sha256", "blake2")),
		"-K":                 flagOpt,
		"--nodiscard":        flagOpt,
	},
}

// Parse splits s (options separated by white space; values as separate
// words, or joined with '=' for long options) and checks every option
// against fstype's list. It returns the words to pass to mkfs. The result
// never contains a word that mkfs could read as a device or file name.
func Parse(fstype, s string) ([]string, error) {
	list, ok := allowed[fstype]
	if !ok {
		return nil, fmt.Errorf("mkfsOptions: no options are accepted for filesystem %q: %w", fstype, errdefs.ErrInvalidArgument)
	}
	words := strings.Fields(s)
	var out []string
	for i := 0; i < len(words); i++ {
		w := words[i]
		name, val, joined := w, "", false
		if strings.HasPrefix(w, "--") {
			name, val, joined = strings.Cut(w, "=")
		}
		opt, ok := list[name]
		if !ok {
			return nil, fmt.Errorf("mkfsOptions: option %q is not allowed for %s (allowed: %s); options that name a path or device never are: %w",
				clip(w), fstype, names(list), errdefs.ErrInvalidArgument)
		}
		switch {
		case !opt.takes && joined:
			return nil, fmt.Errorf("mkfsOptions: option %q takes no value: %w", clip(name), errdefs.ErrInvalidArgument)
		case opt.takes && !joined:
			if i+1 >= len(words) {
				return nil, fmt.Errorf("mkfsOptions: option %q needs a value: %w", clip(name), errdefs.ErrInvalidArgument)
			}
			i++
			val = words[i]
		}
		if !opt.check(val) {
			return nil, fmt.Errorf("mkfsOptions: value %q of option %s is not allowed for %s: %w", clip(val), name, fstype, errdefs.ErrInvalidArgument)
		}
		if opt.takes {
			out = append(out, name, val)
		} else {
			out = append(out, name)
		}
	}
	return out, nil
}

func names(list map[string]option) string {
	var out []string
	for n := range list {
		out = append(out, n)
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

func clip(s string) string {
	if len(s) > 48 {
		return s[:48] + "…"
	}
	return s
}
