//go:build linux

package fileclone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Method says how data was copied.
type Method int

// Methods. The zero Method is returned with errors only.
const (
	// Reflink: the copy shares the source's extents (FICLONE).
	Reflink Method = iota + 1
	// SparseCopy: the data extents were copied and the holes kept.
	SparseCopy
)

func (m Method) String() string {
	switch m {
	case Reflink:
		return "reflink"
	case SparseCopy:
		return "sparse copy"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

const (
	// copyChunk bounds one copy_file_range or read/write run, so that
	// cancellation is noticed inside a large data extent too.
	copyChunk = 64 << 20
	bufSize   = 1 << 20
)

// CloneFile copies the regular file src to dst, which must not exist, with
// src's permission bits, by reflink where the filesystem allows and by
// sparse copy otherwise. dst is synced to disk before CloneFile returns; its
// directory is not. Ownership, times and xattrs are not copied (CloneTree
// copies them). On error dst is removed.
func CloneFile(ctx context.Context, src, dst string) (m Method, err error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("fileclone: clone %s: %w", src, err)
	}
	sfd, err := unix.Open(src, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("fileclone: clone %s: %w", src, err)
	}
	defer unix.Close(sfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return 0, fmt.Errorf("fileclone: clone %s: stat: %w", src, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("fileclone: clone %s: not a regular file: %w", src, errdefs.ErrInvalidArgument)
	}

	// Private until complete; the final mode is set at the end, after the
	// writes that would clear set-id bits.
	dfd, err := unix.Open(dst, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.EEXIST) {
		return 0, fmt.Errorf("fileclone: clone to %s: %w: %w", dst, errdefs.ErrAlreadyExists, err)
	}
	if err != nil {
		return 0, fmt.Errorf("fileclone: clone to %s: %w", dst, err)
	}
	defer func() {
		if cerr := unix.Close(dfd); cerr != nil && err == nil {
			err = fmt.Errorf("fileclone: clone to %s: close: %w", dst, cerr)
		}
		if err != nil {
			m = 0
			_ = unix.Unlink(dst) // ours: O_EXCL made it
		}
	}()

	if m, err = cloneData(ctx, sfd, dfd, st.Size, true); err != nil {
		return 0, fmt.Errorf("fileclone: clone %s to %s: %w", src, dst, err)
	}
	if err := unix.Fchmod(dfd, st.Mode&0o7777); err != nil {
		return 0, fmt.Errorf("fileclone: clone to %s: chmod: %w", dst, err)
	}
	if err := unix.Fsync(dfd); err != nil {
		return 0, fmt.Errorf("fileclone: clone to %s: fsync: %w", dst, err)
	}
	return m, nil
}

// SupportsReflink reports whether files in dir can be reflinked, by cloning
// a small file there. The probe files are unnamed (O_TMPFILE) where the
// filesystem allows, and removed in any case.
func SupportsReflink(ctx context.Context, dir string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("fileclone: probe %s: %w", dir, err)
	}
	src, err := tempFile(dir)
	if err != nil {
		return false, fmt.Errorf("fileclone: probe %s: %w", dir, err)
	}
	defer src.Close()
	dst, err := tempFile(dir)
	if err != nil {
		return false, fmt.Errorf("fileclone: probe %s: %w", dir, err)
	}
	defer dst.Close()
	// Data, not an empty file: some filesystems accept any clone of nothing.
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false, fmt.Errorf("fileclone: probe %s: %w", dir, err)
	}
	err = unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
	switch {
	case err == nil:
		return true, nil
	case reflinkUnsupported(err):
		return false, nil
	}
	return false, fmt.Errorf("fileclone: probe %s: FICLONE: %w", dir, err)
}

// tempFile returns a read-write file in dir that has no name, so that
// nothing is left behind even if the process dies.
func tempFile(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(tmpfile)"), nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) {
		return nil, err
	}
	f, err := os.CreateTemp(dir, ".cairn-reflink-probe-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// reflinkUnsupported tells FICLONE errors that mean "not here" (another
// filesystem, no reflink support, incompatible files) from real failures.
func reflinkUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY)
}

// cloneData fills the empty file dfd with the first size bytes of sfd.
func cloneData(ctx context.Context, sfd, dfd int, size int64, tryReflink bool) (Method, error) {
	if tryReflink {
		err := unix.IoctlFileClone(dfd, sfd)
		if err == nil {
			return Reflink, nil
		}
		if !reflinkUnsupported(err) {
			return 0, fmt.Errorf("FICLONE: %w", err)
		}
	}
	c := copier{ctx: ctx, sfd: sfd, dfd: dfd, useCFR: true}
	if err := c.sparseCopy(size); err != nil {
		return 0, err
	}
	return SparseCopy, nil
}

// copier copies byte ranges between two files at the same offsets.
type copier struct {
	ctx      context.Context
	sfd, dfd int
	useCFR   bool // copy_file_range still worth trying
	buf      []byte
}

// sparseCopy copies the data extents of sfd's first size bytes to the same
// offsets of dfd, then sets dfd's size, so holes (trailing ones included)
// stay holes.
func (c *copier) sparseCopy(size int64) error {
	sfd, dfd := c.sfd, c.dfd
	for off := int64(0); off < size; {
		start, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // nothing but hole up to the end
		}
		end := size
		if err != nil {
			// No SEEK_DATA on this filesystem: all of it is data.
			if !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("SEEK_DATA: %w", err)
			}
			start = off
		} else if end, err = unix.Seek(sfd, start, unix.SEEK_HOLE); err != nil {
			return fmt.Errorf("SEEK_HOLE: %w", err)
		}
		// The source may have grown since it was measured: copy only
		// what was there.
		if start >= size {
			break
		}
		end = min(end, size)
		if err := c.copyRange(start, end-start); err != nil {
			return err
		}
		off = end
	}
	if err := unix.Ftruncate(dfd, size); err != nil {
		return fmt.Errorf("ftruncate: %w", err)
	}
	return nil
}

func (c *copier) copyRange(off, n int64) error {
	for n > 0 {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		chunk := min(n, copyChunk)
		done, err := c.copyChunk(off, chunk)
		if err != nil {
			return err
		}
		off += done
		n -= done
	}
	return nil
}

// copyChunk copies up to n bytes at off and returns how many it copied.
func (c *copier) copyChunk(off, n int64) (int64, error) {
	if c.useCFR {
		roff, woff := off, off
		done, err := unix.CopyFileRange(c.sfd, &roff, c.dfd, &woff, int(n), 0)
		switch {
		case err == nil && done > 0:
			return int64(done), nil
		case err == nil:
			return 0, fmt.Errorf("source ends at %d, before its measured size: %w", off, io.ErrUnexpectedEOF)
		case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EXDEV), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
			// Old kernels, cross-filesystem copies before 5.3 and some
			// filesystems refuse it; read and write instead from now on.
			c.useCFR = false
		default:
			return 0, fmt.Errorf("copy_file_range: %w", err)
		}
	}
	if c.buf == nil {
		c.buf = make([]byte, bufSize)
	}
	buf := c.buf[:min(n, int64(len(c.buf)))]
	r, err := unix.Pread(c.sfd, buf, off)
	if err != nil {
		return 0, fmt.Errorf("read: %w", err)
	}
	if r == 0 {
		return 0, fmt.Errorf("source ends at %d, before its measured size: %w", off, io.ErrUnexpectedEOF)
	}
	for w := 0; w < r; {
		nw, err := unix.Pwrite(c.dfd, buf[w:r], off+int64(w))
		if err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		w += nw
	}
	return int64(r), nil
}
