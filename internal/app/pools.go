package app

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/btrfspool"
	"github.com/cairn-csi/cairn/internal/backend/dirpool"
	"github.com/cairn-csi/cairn/internal/backend/imagepool"
	"github.com/cairn-csi/cairn/internal/backend/lvmpool"
	"github.com/cairn-csi/cairn/internal/driver"
)

// poolSpec is one --pool name=type:path.
type poolSpec struct{ Name, Type, Path string }

type poolFlags []poolSpec

var poolNamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (p *poolFlags) String() string {
	var parts []string
	for _, s := range *p {
		parts = append(parts, s.Name+"="+s.Type+":"+s.Path)
	}
	return strings.Join(parts, ",")
}

// Set parses name=type:path.
func (p *poolFlags) Set(v string) error {
	name, rest, ok := strings.Cut(v, "=")
	typ, path, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return fmt.Errorf("pool %q: want name=type:path", v)
	}
	if !poolNamePattern.MatchString(name) {
		return fmt.Errorf("pool name %q: want lower-case letters, digits and '-', at most 63", name)
	}
	if _, ok := poolTypes[typ]; !ok {
		return fmt.Errorf("pool %q: unknown type %q (known: %s)", name, typ, strings.Join(PoolTypes(), ", "))
	}
	if typ == lvmpool.Type {
		// An LVM pool's "path" is VG or VG/THINPOOL, not a directory.
		if _, _, err := lvmpool.ParseSpec(path); err != nil {
			return fmt.Errorf("pool %q: %w", name, err)
		}
	} else if !filepath.IsAbs(path) {
		return fmt.Errorf("pool %q: path %q must be absolute", name, path)
	}
	for _, s := range *p {
		if s.Name == name {
			return fmt.Errorf("pool %q given twice", name)
		}
		// An LVM pool owns the LVs tagged with its VG or VG/THINPOOL, and
		// its reconcile removes the ones its store records do not know: a
		// second pool on the same one would remove the first one's volumes.
		if typ == lvmpool.Type && s.Type == lvmpool.Type && s.Path == path {
			return fmt.Errorf("pool %q: lvm:%s is already pool %q; one VG or thin pool is one pool (use StorageClass parameters, such as encryption, to tell volumes apart)", name, path, s.Name)
		}
	}
	if typ != lvmpool.Type {
		path = filepath.Clean(path)
	}
	*p = append(*p, poolSpec{Name: name, Type: typ, Path: path})
	return nil
}

// poolOptions are the flags that tune pools of one type.
type poolOptions struct {
	LVMOverProvisionRatio float64 // --lvm-thin-overprovision-ratio
	LVMFullPercent        float64 // --lvm-thin-full-percent
}

// poolOpener opens one pool of a type.
type poolOpener func(ctx context.Context, path string, o poolOptions, log *slog.Logger) (backend.Backend, error)

// poolTypes maps each pool type to its constructor. The directory-rooted
// pools share one constructor shape, New(ctx, path, log); the lvm pool
// also takes the --lvm-* flags.
var poolTypes = map[string]poolOpener{
	btrfspool.Type: opener(btrfspool.New),
	dirpool.Type:   opener(dirpool.New),
	imagepool.Type: opener(imagepool.New),
	lvmpool.Type: func(ctx context.Context, spec string, o poolOptions, log *slog.Logger) (backend.Backend, error) {
		return lvmpool.New(ctx, spec, lvmpool.Options{OverProvisionRatio: o.LVMOverProvisionRatio, FullPercent: o.LVMFullPercent, Log: log})
	},
}

// opener adapts a pool constructor of the common shape to a poolOpener.
func opener[P backend.Backend](newPool func(ctx context.Context, path string, log *slog.Logger) (P, error)) poolOpener {
	return func(ctx context.Context, path string, _ poolOptions, log *slog.Logger) (backend.Backend, error) {
		p, err := newPool(ctx, path, log)
		if err != nil {
			return nil, err // not a typed nil in a non-nil interface
		}
		return p, nil
	}
}

// PoolTypes lists the pool types this build knows.
func PoolTypes() []string {
	var out []string
	for t := range poolTypes {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// listSeparator splits a repeatable flag's environment twin. mkfs arguments
// contain commas (-E a=1,b=2), so they are separated by ';'.
var listSeparator = map[string]string{"pool": ",", "mkfs-options": ";"}

// mkfsFlags is --mkfs-options pool:fstype=ARGS, repeatable: mkfs arguments
// the node's administrator trusts for one pool, which the API may not set.
type mkfsFlags map[string]map[string][]string

func (m *mkfsFlags) String() string {
	var parts []string
	for pool, byFS := range *m {
		for fs, args := range byFS {
			parts = append(parts, pool+":"+fs+"="+strings.Join(args, " "))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ";")
}

// Set parses pool:fstype=ARGS.
func (m *mkfsFlags) Set(v string) error {
	key, args, ok := strings.Cut(v, "=")
	pool, fs, ok2 := strings.Cut(key, ":")
	if !ok || !ok2 || pool == "" {
		return fmt.Errorf("mkfs options %q: want pool:fstype=ARGS", v)
	}
	switch fs {
	case "ext4", "xfs", "btrfs":
	default:
		return fmt.Errorf("mkfs options %q: unknown filesystem type %q (ext4, xfs, btrfs)", v, fs)
	}
	if *m == nil {
		*m = mkfsFlags{}
	}
	if (*m)[pool] == nil {
		(*m)[pool] = map[string][]string{}
	}
	(*m)[pool][fs] = strings.Fields(args)
	return nil
}

// check refuses options for a pool that is not configured.
func (m mkfsFlags) check(pools poolFlags) error {
	for name := range m {
		if !slices.ContainsFunc(pools, func(p poolSpec) bool { return p.Name == name }) {
			return fmt.Errorf("--mkfs-options names pool %q, which is not configured", name)
		}
	}
	return nil
}

func openPools(ctx context.Context, specs poolFlags, mkfs mkfsFlags, o poolOptions, log *slog.Logger) ([]driver.Pool, error) {
	var out []driver.Pool
	for _, s := range specs {
		b, err := poolTypes[s.Type](ctx, s.Path, o, log.With("pool", s.Name))
		if err != nil {
			return nil, fmt.Errorf("pool %s (%s at %s): %w", s.Name, s.Type, s.Path, err)
		}
		c, err := b.Capacity(ctx)
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", s.Name, err)
		}
		log.Info("pool opened", "pool", s.Name, "type", s.Type, "path", s.Path,
			"availableBytes", c.AvailableBytes, "capacityEnforced", c.Enforced)
		if !c.Enforced {
			log.Warn("pool does not enforce volume sizes: a volume can use more than its capacity", "pool", s.Name, "type", s.Type)
		}
		root := s.Path
		if s.Type == lvmpool.Type {
			root = "" // a VG, not a directory on the node
		}
		out = append(out, driver.Pool{Name: s.Name, Backend: b, Root: root, MkfsOptions: mkfs[s.Name]})
	}
	return out, nil
}
