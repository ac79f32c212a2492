package kubeletreg_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/cairn-csi/cairn/internal/kubeletreg"
)

// Example runs the registration server in a scratch directory and plays
// kubelet's part: it asks for the plugin info, then reports success.
func ExampleServe() {
	dir, err := os.MkdirTemp("", "kreg")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	cfg := kubeletreg.Config{
		DriverName:      "cairn.csi.dev",
		Endpoint:        "/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock",
		RegistrationDir: dir,
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- kubeletreg.Serve(ctx, cfg) }()

	// kubelet's plugin watcher reacts to the socket appearing.
	for range 500 {
		if _, err := os.Stat(cfg.SocketPath()); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+cfg.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	client := registerapi.NewRegistrationClient(conn)

	info, err := client.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		panic(err)
	}
	fmt.Println(info.GetType(), info.GetName(), info.GetEndpoint(), info.GetSupportedVersions())
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		panic(err)
	}

	cancel()
	fmt.Println("serve returned:", <-done)
	_, err = os.Stat(cfg.SocketPath())
	fmt.Println("socket removed:", os.IsNotExist(err))
	// Output:
	// CSIPlugin cairn.csi.dev /var/lib/kubelet/plugins/cairn.csi.dev/csi.sock [1.0.0]
	// serve returned: <nil>
	// socket removed: true
}
