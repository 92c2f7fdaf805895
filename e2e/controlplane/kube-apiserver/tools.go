//go:build tools

// Package tools pins kube-apiserver for the e2e harness; the binary is built
// with `go build k8s.io/kubernetes/cmd/kube-apiserver` from this module.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
