package cairnctl

import (
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// The view types are cairnctl's JSON and YAML output: plain structs rather
// than protojson, because protojson prints 64-bit integers as strings and
// scripts want capacityBytes as a number. Field names follow the CSI proto
// in lowerCamelCase.

// volumeView is one volume.
type volumeView struct {
	VolumeID           string              `json:"volumeId"`
	CapacityBytes      int64               `json:"capacityBytes"`
	VolumeContext      map[string]string   `json:"volumeContext,omitempty"`
	ContentSource      *contentSourceView  `json:"contentSource,omitempty"`
	AccessibleTopology []map[string]string `json:"accessibleTopology,omitempty"`
	// PublishedNodeIDs is nil when the driver did not report a status.
	PublishedNodeIDs []string `json:"publishedNodeIds,omitempty"`
}

type contentSourceView struct {
	SnapshotID string `json:"snapshotId,omitempty"`
	VolumeID   string `json:"volumeId,omitempty"`
}

func (c *contentSourceView) String() string {
	switch {
	case c == nil:
		return ""
	case c.SnapshotID != "":
		return "snapshot:" + c.SnapshotID
	}
	return "volume:" + c.VolumeID
}

func newVolumeView(v *csi.Volume, published []string) volumeView {
	out := volumeView{
		VolumeID:         v.GetVolumeId(),
		CapacityBytes:    v.GetCapacityBytes(),
		VolumeContext:    v.GetVolumeContext(),
		PublishedNodeIDs: published,
	}
	if cs := v.GetContentSource(); cs != nil {
		out.ContentSource = &contentSourceView{
			SnapshotID: cs.GetSnapshot().GetSnapshotId(),
			VolumeID:   cs.GetVolume().GetVolumeId(),
		}
	}
	for _, t := range v.GetAccessibleTopology() {
		out.AccessibleTopology = append(out.AccessibleTopology, t.GetSegments())
	}
	return out
}

func volumeHeader() []string {
	return []string{"ID", "CAPACITY", "SOURCE", "PUBLISHED ON", "TOPOLOGY"}
}

func (v volumeView) cells() []string {
	capacity := "-"
	if v.CapacityBytes > 0 {
		capacity = humanBytes(v.CapacityBytes)
	}
	return []string{v.VolumeID, capacity, orDash(v.ContentSource.String()),
		orDash(strings.Join(v.PublishedNodeIDs, ",")), orDash(joinTopologies(v.AccessibleTopology))}
}

// details is the vertical layout for a single volume.
func (v volumeView) details() [][2]string {
	capacity := "unknown"
	if v.CapacityBytes > 0 {
		capacity = humanBytes(v.CapacityBytes) + " (" + itoa(v.CapacityBytes) + " bytes)"
	}
	var topo []string
	for _, t := range v.AccessibleTopology {
		topo = append(topo, joinMap(t, ","))
	}
	return [][2]string{
		{"ID", v.VolumeID},
		{"CAPACITY", capacity},
		{"SOURCE", orDash(v.ContentSource.String())},
		{"PUBLISHED ON", orDash(strings.Join(v.PublishedNodeIDs, ","))},
		{"TOPOLOGY", orDash(strings.Join(topo, "\n"))},
		{"CONTEXT", orDash(joinMap(v.VolumeContext, "\n"))},
	}
}

// snapshotView is one snapshot.
type snapshotView struct {
	SnapshotID      string     `json:"snapshotId"`
	SourceVolumeID  string     `json:"sourceVolumeId"`
	SizeBytes       int64      `json:"sizeBytes"`
	CreationTime    *time.Time `json:"creationTime,omitempty"`
	ReadyToUse      bool       `json:"readyToUse"`
	GroupSnapshotID string     `json:"groupSnapshotId,omitempty"`
}

func newSnapshotView(s *csi.Snapshot) snapshotView {
	out := snapshotView{
		SnapshotID:      s.GetSnapshotId(),
		SourceVolumeID:  s.GetSourceVolumeId(),
		SizeBytes:       s.GetSizeBytes(),
		ReadyToUse:      s.GetReadyToUse(),
		GroupSnapshotID: s.GetGroupSnapshotId(),
	}
	if t := s.GetCreationTime(); t != nil {
		tt := t.AsTime().UTC()
		out.CreationTime = &tt
	}
	return out
}

func snapshotHeader() []string {
	return []string{"ID", "SOURCE VOLUME", "SIZE", "READY", "CREATED"}
}

func (s snapshotView) cells() []string {
	size, created := "-", "-"
	if s.SizeBytes > 0 {
		size = humanBytes(s.SizeBytes)
	}
	if s.CreationTime != nil {
		created = s.CreationTime.Format(time.RFC3339)
	}
	return []string{s.SnapshotID, orDash(s.SourceVolumeID), size, boolWord(s.ReadyToUse), created}
}

// serviceView is what info learned about one service.
type serviceView struct {
	Served       bool     `json:"served"`
	Capabilities []string `json:"capabilities,omitempty"`
	// Error is why the service's capabilities could not be read.
	Error string `json:"error,omitempty"`
}

func (s serviceView) String() string {
	if !s.Served {
		return "not served (" + s.Error + ")"
	}
	if len(s.Capabilities) == 0 {
		return "(none)"
	}
	return strings.Join(s.Capabilities, "\n")
}

type nodeInfoView struct {
	NodeID             string            `json:"nodeId"`
	MaxVolumesPerNode  int64             `json:"maxVolumesPerNode"`
	AccessibleTopology map[string]string `json:"accessibleTopology,omitempty"`
}

// infoView is the output of info.
type infoView struct {
	Name               string            `json:"name"`
	VendorVersion      string            `json:"vendorVersion"`
	Manifest           map[string]string `json:"manifest,omitempty"`
	PluginCapabilities []string          `json:"pluginCapabilities"`
	Controller         serviceView       `json:"controller"`
	GroupController    serviceView       `json:"groupController"`
	Node               serviceView       `json:"node"`
	NodeInfo           *nodeInfoView     `json:"nodeInfo,omitempty"`
}

func pluginCapNames(caps []*csi.PluginCapability) []string {
	var out []string
	for _, c := range caps {
		switch {
		case c.GetService() != nil:
			out = append(out, c.GetService().GetType().String())
		case c.GetVolumeExpansion() != nil:
			out = append(out, "VOLUME_EXPANSION_"+c.GetVolumeExpansion().GetType().String())
		}
	}
	sort.Strings(out)
	return out
}

func controllerCapNames(caps []*csi.ControllerServiceCapability) []string {
	var out []string
	for _, c := range caps {
		out = append(out, c.GetRpc().GetType().String())
	}
	sort.Strings(out)
	return out
}

func nodeCapNames(caps []*csi.NodeServiceCapability) []string {
	var out []string
	for _, c := range caps {
		out = append(out, c.GetRpc().GetType().String())
	}
	sort.Strings(out)
	return out
}

func groupCapNames(caps []*csi.GroupControllerServiceCapability) []string {
	var out []string
	for _, c := range caps {
		out = append(out, c.GetRpc().GetType().String())
	}
	sort.Strings(out)
	return out
}

// usageView is one line of NodeGetVolumeStats.
type usageView struct {
	Unit      string `json:"unit"`
	Total     int64  `json:"total"`
	Used      int64  `json:"used"`
	Available int64  `json:"available"`
}

type statsView struct {
	VolumeID   string      `json:"volumeId"`
	VolumePath string      `json:"volumePath"`
	Usage      []usageView `json:"usage"`
}

// actionView confirms a call that returns nothing (delete, stage, ...).
type actionView struct {
	Action            string `json:"action"`
	VolumeID          string `json:"volumeId,omitempty"`
	SnapshotID        string `json:"snapshotId,omitempty"`
	StagingTargetPath string `json:"stagingTargetPath,omitempty"`
	TargetPath        string `json:"targetPath,omitempty"`
}

// expandView is the output of volume expand.
type expandView struct {
	VolumeID string `json:"volumeId"`
	// Controller is nil when ControllerExpandVolume was not called.
	Controller *controllerExpandView `json:"controller,omitempty"`
	// Node is nil when NodeExpandVolume was not called; NodeSkipped says why.
	Node        *nodeExpandView `json:"node,omitempty"`
	NodeSkipped string          `json:"nodeSkipped,omitempty"`
}

type controllerExpandView struct {
	CapacityBytes         int64 `json:"capacityBytes"`
	NodeExpansionRequired bool  `json:"nodeExpansionRequired"`
}

type nodeExpandView struct {
	VolumePath    string `json:"volumePath"`
	CapacityBytes int64  `json:"capacityBytes"`
}

func boolWord(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
