package driver

import (
	"fmt"
	"strings"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxLoggedValue bounds each logged map value: a volume context can carry
// kilobytes (service-account tokens), and a log line is no place for them.
const maxLoggedValue = 256

// sensitiveKeyParts mark map keys whose values are credentials although the
// CSI spec does not mark the field csi_secret: kubelet puts the pod's
// service-account tokens in volume_context
// (csi.storage.k8s.io/serviceAccount.tokens), and StorageClass parameters
// and volume attributes are free-form.
var sensitiveKeyParts = []string{"token", "secret", "password", "passwd", "passphrase", "credential", "apikey", "privatekey"}

func sensitiveKey(k string) bool {
	k = strings.ToLower(k)
	for _, p := range sensitiveKeyParts {
		if strings.Contains(k, p) {
			return true
		}
	}
	return false
}

// redacted renders a request or response for the log: fields marked
// csi_secret are stripped by protosanitizer, and in every string map
// (volume_context, parameters, publish_context, …) values under sensitive
// keys are replaced and long values are cut.
func redacted(msg any) string {
	m, ok := msg.(proto.Message)
	if !ok || m == nil {
		return protosanitizer.StripSecrets(msg).String()
	}
	c := proto.Clone(m)
	redactMaps(c.ProtoReflect())
	return protosanitizer.StripSecrets(c).String()
}

func redactMaps(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap() && fd.MapKey().Kind() == protoreflect.StringKind && fd.MapValue().Kind() == protoreflect.StringKind:
			mp := v.Map()
			var keys []protoreflect.MapKey
			mp.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool { keys = append(keys, k); return true })
			for _, k := range keys {
				val := mp.Get(k).String()
				switch {
				case sensitiveKey(k.String()):
					mp.Set(k, protoreflect.ValueOfString(fmt.Sprintf("***redacted %d bytes***", len(val))))
				case len(val) > maxLoggedValue:
					mp.Set(k, protoreflect.ValueOfString(fmt.Sprintf("%s…(%d bytes)", val[:maxLoggedValue], len(val))))
				}
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { redactMaps(mv.Message()); return true })
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				redactMaps(l.Get(i).Message())
			}
		case fd.Message() != nil:
			redactMaps(v.Message())
		}
		return true
	})
}
