//go:build tools

// Package tools pins helm for the chart's tests and the local bring-up; the
// binary is built with `go build` from this module.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
