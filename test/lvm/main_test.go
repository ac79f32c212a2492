package lvm

import (
	"testing"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

// TestMain runs the tests in a private mount namespace: see
// testdriver.MainInPrivateMounts for why.
func TestMain(m *testing.M) { testdriver.MainInPrivateMounts(m, "test/lvm") }
