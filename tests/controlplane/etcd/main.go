// Command etcd is upstream etcd built from the Go module proxy: the
// go.etcd.io/etcd/v3 main module is not published there, so we wrap etcdmain.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
