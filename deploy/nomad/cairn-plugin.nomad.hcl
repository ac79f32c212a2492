# Cairn as a Nomad CSI plugin: one monolith instance on every client node
# (a system job), serving the Identity, Controller and Node services on the
# socket Nomad gives it. See README.md in this directory.
#
#   nomad job run cairn-plugin.nomad.hcl
#   nomad plugin status cairn

variable "image" {
  type    = string
  default = "ghcr.io/cairn-csi/cairn:0.1.0"
}

# Pools every node serves, as cairn --pool values: name=type:path.
variable "pools" {
  type    = list(string)
  default = ["default=dir:/var/lib/cairn/pools/default"]
}

job "cairn-plugin" {
  type        = "system"
  datacenters = ["*"]

  group "cairn" {
    # Restart in place: the plugin's volumes live on this node, it cannot
    # usefully move anywhere else.
    restart {
      attempts = 10
      interval = "5m"
      delay    = "10s"
      mode     = "delay"
    }

    task "plugin" {
      driver = "docker"

      config {
        image = var.image

        # Mounting, loop devices, mkfs and quotas need root and a
        # privileged container (allow_privileged must be on in the docker
        # plugin configuration of the client).
        privileged = true

        args = concat([
          # Nomad puts the plugin socket in mount_dir (below).
          "--endpoint=unix:///csi/csi.sock",
          # The node ID is the value of the topology key
          # topology.cairn.csi.dev/node; use the Nomad node name so that a
          # volume's topology_request can name it.
          "--node-id=${node.unique.name}",
          "--mode=all",
          "--data-dir=/var/lib/cairn",
          "--log-format=json",
          # /metrics and /healthz (the CSI Probe) on the host network.
          "--metrics-address=:9808",
          ], [for p in var.pools : "--pool=${p}"])

        # The data dir and every pool path must be the host's: volumes and
        # their metadata outlive the task. rshared, so that mounts made
        # under them are seen on both sides.
        mount {
          type     = "bind"
          source   = "/var/lib/cairn"
          target   = "/var/lib/cairn"
          readonly = false
          bind_options {
            propagation = "rshared"
          }
        }

        # Loop devices for image pools, and the block devices they expose.
        mount {
          type     = "bind"
          source   = "/dev"
          target   = "/dev"
          readonly = false
        }
      }

      csi_plugin {
        id        = "cairn"
        type      = "monolith"
        mount_dir = "/csi"
        # Nomad restarts the task if the plugin stays unhealthy this long.
        health_timeout = "30s"
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
