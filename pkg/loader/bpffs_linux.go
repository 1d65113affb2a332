package loader

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ensureBPFFS makes sure dir can hold pins: its nearest existing ancestor
// must be on a bpf filesystem. When that ancestor is the conventional
// mount point /sys/fs/bpf and nothing is mounted there (no systemd), a
// bpffs is mounted on it, as bpftool does.
func ensureBPFFS(dir string) error {
	dir = filepath.Clean(dir)
	p := dir
	for {
		if _, err := os.Stat(p); err == nil {
			break
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("no existing ancestor of %s", dir)
		}
		p = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", p, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if p == "/sys/fs/bpf" {
		if err := unix.Mount("bpf", p, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", p, err)
		}
		return nil
	}
	return fmt.Errorf("%s is not on a bpf filesystem (mount -t bpf bpf %s)", p, p)
}
