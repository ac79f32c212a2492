package endpoint_test

import (
	"fmt"

	"github.com/cairn-csi/cairn/internal/endpoint"
)

func ExampleParse() {
	for _, s := range []string{
		"unix:///run/cairn/csi.sock",
		"tcp://127.0.0.1:10000",
		"unix://relative/csi.sock",
	} {
		e, err := endpoint.Parse(s)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println(e.Network, e.Address)
	}
	// Output:
	// unix /run/cairn/csi.sock
	// tcp 127.0.0.1:10000
	// error: endpoint "unix://relative/csi.sock": want unix:///absolute/path: invalid argument
}
