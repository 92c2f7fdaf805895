// Command etcd is etcd's own server entry point, built from a pinned module
// version for the e2e harness (go install refuses the upstream module because
// of its replace directives).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
