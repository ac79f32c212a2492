package store

import (
	"encoding/json"
	"testing"
	"time"
)

// listedSeeds are records as json.Marshal writes them, and inputs that
// must take the slow path.
func listedSeeds() [][]byte {
	full := Volume{ID: "vol-0123456789abcdef", Name: "pvc-1", Pool: "default", CapacityBytes: 1 << 30, AccessType: "mount",
		FsType: "xfs", MkfsOptions: "-b size=4096", Parameters: map[string]string{"pool": "default", "a<b": "é\"x"},
		SourceSnapshotID: "snap-1", SourceVolumeID: "vol-2", Ephemeral: true, CreatedAt: time.Unix(1700000000, 5).UTC(),
		Encryption: "fscrypt", KeyID: "k"}
	raw, _ := json.Marshal(full)
	plain, _ := json.Marshal(Volume{ID: "vol-1", Pool: "p"})
	return [][]byte{raw, plain,
		[]byte(`{}`), []byte(` { "id" : "x" , "capacityBytes" : -12 } `),
		[]byte(`{"ID":"upper"}`), []byte(`{"id":"a","id":"b"}`), []byte(`{"id":"\u0041"}`),
		[]byte(`{"capacityBytes":01}`), []byte(`{"capacityBytes":1e3}`), []byte(`{"capacityBytes":null}`),
		[]byte(`{"capacityBytes":99999999999999999999}`), []byte(`{"x":1.5e-3,"id":"y"}`), []byte(`{"x":.5}`),
		[]byte(`{"x":[1]}`), []byte(`{"x":{"a":1}}`), []byte(`{"id":"x",}`), []byte(`{"id":"x"} x`), []byte(`{"id":null}`),
		[]byte(`{"x":"\q"}`), []byte("{\"x\":\"\x01\"}"), []byte(`{"x":tru}`), []byte(`{"x":truex}`), []byte(``),
	}
}

// TestDecodeListedMatchesJSON: the fast path gives encoding/json's result
// on records and on inputs it must refuse.
func TestDecodeListedMatchesJSON(t *testing.T) {
	for _, raw := range listedSeeds() {
		checkListed(t, raw)
	}
}

// FuzzDecodeListed compares decodeListed with encoding/json on any input.
func FuzzDecodeListed(f *testing.F) {
	for _, raw := range listedSeeds() {
		f.Add(raw)
	}
	f.Fuzz(checkListed)
}

func checkListed(t *testing.T, raw []byte) {
	var got, want listedFields
	gerr := decodeListed(raw, &got)
	werr := json.Unmarshal(raw, &want)
	if (gerr == nil) != (werr == nil) || (werr == nil && got != want) {
		t.Fatalf("%q: got %+v (%v), encoding/json %+v (%v)", raw, got, gerr, want, werr)
	}
}
