# A Cairn volume for `nomad volume create volume.hcl`.
#
# Cairn creates it on one node: the node of the plugin instance that handles
# CreateVolume (see README.md). Its topology then pins every allocation that
# claims it to that node.
id        = "pgdata"
name      = "pgdata"
type      = "csi"
plugin_id = "cairn"

# The volume is at least capacity_min; Cairn rounds up within capacity_max.
capacity_min = "1GiB"
capacity_max = "2GiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

capability {
  access_mode     = "single-node-reader-only"
  attachment_mode = "file-system"
}

# For an image pool, the filesystem to make on the image file:
# mount_options {
#   fs_type     = "ext4"
#   mount_flags = ["noatime"]
# }

# Ask for a particular node (its Nomad node name, which the plugin job
# passes as --node-id). Without it, the volume lands wherever the chosen
# plugin instance runs.
# topology_request {
#   required {
#     topology { segments { "topology.cairn.csi.dev/node" = "client-1" } }
#   }
# }

parameters {
  # The pool, by name, as given to cairn --pool on the nodes.
  pool = "default"
}
