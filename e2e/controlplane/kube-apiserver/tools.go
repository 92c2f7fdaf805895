//go:build tools

// Package tools pins kube-apiserver and kubectl for the e2e harness and the
// local bring-up; the binaries are built with `go build` from this module.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
