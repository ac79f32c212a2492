package deploy

import (
	"slices"
	"strings"
	"testing"
)

// lvmValues are an lvm thin pool whose StorageClass encrypts each claim
// with its own Secret (docs/kubernetes.md, "Encrypted volumes"), and a
// thick pool on another VG, with the thin-pool tuning set.
const lvmValues = `
pools:
  - name: lvm
    type: lvm
    path: vg0/thin
    storageClass:
      name: cairn-lvm-encrypted
      fsType: xfs
      parameters:
        encryption: "true"
        csi.storage.k8s.io/provisioner-secret-name: ${pvc.name}
        csi.storage.k8s.io/provisioner-secret-namespace: ${pvc.namespace}
        csi.storage.k8s.io/node-stage-secret-name: ${pvc.name}
        csi.storage.k8s.io/node-stage-secret-namespace: ${pvc.namespace}
  - {name: thick, type: lvm, path: vg1}
lvm: {overProvisionRatio: 2.5, fullPercent: 85}
`

// TestLVMPools checks what the chart renders for lvm pools: the --pool
// flags with VG/THINPOOL and VG paths, the thin-pool tuning flags (only
// when an lvm pool exists), the host's lvm2 configuration, locks and
// run directory (so that the container's lvm2 and the host's agree and
// do not race), no hostPath for a pool "path" that is a VG, and the
// StorageClasses: fsType, and the encryption parameter with per-claim
// secret templates passed through unchanged.
func TestLVMPools(t *testing.T) {
	helm := helmBin(t)
	objs := render(t, helm, lvmValues)
	pod := find(t, objs, "DaemonSet", "cairn-node").podSpec(t)
	cairn := pod.container(t, "cairn")
	cairn.wantArgs(t, "--pool=lvm=lvm:vg0/thin", "--pool=thick=lvm:vg1",
		"--lvm-thin-overprovision-ratio=2.5", "--lvm-thin-full-percent=85")
	for _, dir := range []string{"/etc/lvm", "/run/lock/lvm", "/run/lvm", "/dev"} {
		pod.wantMount(t, cairn, dir, dir, "")
	}
	for _, m := range cairn.VolumeMounts {
		if strings.Contains(m.MountPath, "vg0") || strings.Contains(m.MountPath, "vg1") {
			t.Errorf("an lvm pool's VG is mounted as a path: %s", m.MountPath)
		}
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil && (strings.Contains(v.HostPath.Path, "vg0") || strings.Contains(v.HostPath.Path, "vg1")) {
			t.Errorf("an lvm pool's VG is a hostPath volume: %s", v.HostPath.Path)
		}
	}

	tests := []struct {
		name   string
		params map[string]string
	}{
		{"cairn-lvm-encrypted", map[string]string{
			"pool": "lvm", "csi.storage.k8s.io/fstype": "xfs", "encryption": "true",
			"csi.storage.k8s.io/provisioner-secret-name":      "${pvc.name}",
			"csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
			"csi.storage.k8s.io/node-stage-secret-name":       "${pvc.name}",
			"csi.storage.k8s.io/node-stage-secret-namespace":  "${pvc.namespace}",
		}},
		{"cairn-thick", map[string]string{"pool": "thick", "csi.storage.k8s.io/fstype": "ext4"}},
	}
	for _, tt := range tests {
		sc := find(t, objs, "StorageClass", tt.name)
		if len(sc.Parameters) != len(tt.params) {
			t.Errorf("%s: parameters %v, want %v", tt.name, sc.Parameters, tt.params)
		}
		for k, v := range tt.params {
			if sc.Parameters[k] != v {
				t.Errorf("%s: parameters[%s] = %q, want %q", tt.name, k, sc.Parameters[k], v)
			}
		}
	}

	// Without an lvm pool, no lvm flags.
	def := find(t, render(t, helm, ""), "DaemonSet", "cairn-node").podSpec(t).container(t, "cairn")
	if i := slices.IndexFunc(def.Args, func(a string) bool { return strings.HasPrefix(a, "--lvm-") }); i >= 0 {
		t.Errorf("lvm flag %s rendered without an lvm pool", def.Args[i])
	}
}
