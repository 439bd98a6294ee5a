// Command coredns is CoreDNS with only the plugins the test cluster's Corefile uses:
// kubernetes (cluster.local records, pod and headless-Service names), cache, errors,
// health and ready (start-up probes), log. No `forward`: names outside the cluster get
// an answer from no one, so nothing is ever asked of an upstream resolver.
// Upstream's core/plugin/zplugin.go registers every plugin (~8 min to build on 2 cores).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The Corefile may only name these (upstream's dnsserver.Directives lists all of them, in
// the order they run; unregistered ones are simply unavailable).
var _ = dnsserver.Directives

func main() { coremain.Run() }
