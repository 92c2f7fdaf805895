// Command countersign-health evaluates Countersign objects the way Argo CD and
// Flux do: the Argo CD custom health Lua script (charts/countersign/files/argocd/health.lua)
// run in gopher-lua exactly as Argo CD's util/lua runs an argocd-cm health
// customization, and kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the
// library Flux's health checks use.
//
// Usage: countersign-health -script health.lua [DIR | FILE.json ... | -]
//
// Objects are read from the JSON files of DIR (sorted by name), from the
// given files, or, with "-" or no argument, one JSON object per line on stdin.
// For each object it prints one JSON line:
//
//	{"source": ..., "kind": ..., "name": ...,
//	 "argo": {"status", "message"},    // what Argo CD shows (gitops-engine health.GetResourceHealth)
//	 "lua": {"status", "message"},     // the script alone (util/lua VM.ExecuteHealthLua)
//	 "kstatus": {"status", "message"}} // status.Compute
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// Health mirrors gitops-engine's health.HealthStatus (json tags included,
// since Argo CD decodes the Lua table through JSON into it).
type Health struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

// The codes of gitops-engine pkg/health.
const (
	healthUnknown     = "Unknown"
	healthProgressing = "Progressing"
	healthHealthy     = "Healthy"
	healthSuspended   = "Suspended"
	healthDegraded    = "Degraded"
	healthMissing     = "Missing"

	// util/lua: messages and the hook finalizer of gitops-engine pkg/sync/hook.
	incorrectReturnType = "expect %s output from Lua script, not %s"
	invalidHealthStatus = "Lua returned an invalid health status"
	hookFinalizer       = "argocd.argoproj.io/hook-finalizer"
)

// isValidHealthStatusCode is util/lua's isValidHealthStatusCode.
func isValidHealthStatusCode(code string) bool {
	switch code {
	case healthUnknown, healthProgressing, healthSuspended, healthHealthy, healthDegraded, healthMissing:
		return true
	}
	return false
}

// runLua is util/lua VM.runLuaWithResourceActionParameters for a health
// script from argocd-cm with UseOpenLibs false (the default of a
// resource.customizations.health.<group_kind> key): no standard libraries
// except package, base, table and Argo CD's safe os (time, date), a 1 s
// timeout, an empty actionParams table, and obj as a Lua table.
func runLua(obj *unstructured.Unstructured, script string) (*lua.LState, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			panic(err)
		}
	}
	l.PreloadModule(lua.OsLibName, safeOsLoader)

	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)

	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", decodeValue(l, obj.Object))

	fn, err := l.LoadString(script)
	if err == nil {
		l.Push(fn)
		err = l.PCall(0, lua.MultRet, nil)
	}
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
		apiErr.StackTrace = ""
		err = apiErr
	}
	return l, err
}

// executeHealthLua is util/lua VM.ExecuteHealthLua: the value left on top of
// the stack, a table encoded with gopher-json and decoded into HealthStatus;
// an empty table or nil gives an empty status, an unknown code gives Unknown.
func executeHealthLua(obj *unstructured.Unstructured, script string) (*Health, error) {
	l, err := runLua(obj, script)
	if err != nil {
		return nil, err
	}
	returnValue := l.Get(-1)
	if returnValue.Type() == lua.LTTable {
		jsonBytes, err := luajson.Encode(returnValue)
		if err != nil {
			return nil, err
		}
		health := &Health{}
		if err := json.Unmarshal(jsonBytes, health); err != nil {
			typeError := &json.UnmarshalTypeError{Value: "array", Type: reflect.TypeFor[*Health]()}
			if errors.As(err, &typeError) {
				return &Health{}, nil
			}
			return nil, err
		}
		if !isValidHealthStatusCode(health.Status) {
			return &Health{Status: healthUnknown, Message: invalidHealthStatus}, nil
		}
		return health, nil
	} else if returnValue.Type() == lua.LTNil {
		return &Health{}, nil
	}
	return nil, fmt.Errorf(incorrectReturnType, "table", returnValue.Type().String())
}

// getResourceHealth is gitops-engine health.GetResourceHealth with the
// script as the only override: an object being deleted (without the hook
// finalizer) is "Pending deletion" before any script runs, and a script
// error is Unknown with the error as message.
func getResourceHealth(obj *unstructured.Unstructured, script string) *Health {
	if obj.GetDeletionTimestamp() != nil && !slices.Contains(obj.GetFinalizers(), hookFinalizer) {
		return &Health{Status: healthProgressing, Message: "Pending deletion"}
	}
	return luaHealth(obj, script)
}

func luaHealth(obj *unstructured.Unstructured, script string) *Health {
	health, err := executeHealthLua(obj, script)
	if err != nil {
		return &Health{Status: healthUnknown, Message: err.Error()}
	}
	return health
}

// decodeValue is util/lua's decodeValue (gopher-json's, plus int types).
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case int:
		return lua.LNumber(converted)
	case int32:
		return lua.LNumber(converted)
	case int64:
		return lua.LNumber(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	case nil:
		return lua.LNil
	}
	return lua.LNil
}

// Argo CD's oslib_safe: only os.time and os.date (enough for scripts that
// use them; this one does not).
var osFuncs = map[string]lua.LGFunction{
	"time": func(l *lua.LState) int { l.Push(lua.LNumber(time.Now().Unix())); return 1 },
	"date": func(l *lua.LState) int { l.Push(lua.LString(time.Now().Format(time.RFC3339))); return 1 },
}

func openSafeOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.TabLibName, osFuncs))
	return 1
}

func safeOsLoader(l *lua.LState) int {
	l.Push(l.SetFuncs(l.NewTable(), osFuncs))
	return 1
}

type result struct {
	Source  string  `json:"source"`
	Kind    string  `json:"kind"`
	Name    string  `json:"name"`
	Argo    *Health `json:"argo"`
	Lua     *Health `json:"lua"`
	Kstatus *Health `json:"kstatus"`
}

func evaluate(source string, data []byte, script string) (*result, error) {
	obj := &unstructured.Unstructured{}
	// UnmarshalJSON is how client-go decodes objects for Argo CD's cache
	// (integers become int64) and what kstatus expects.
	if err := obj.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	out := &result{Source: source, Kind: obj.GetKind(), Name: obj.GetName()}
	out.Argo = getResourceHealth(obj, script)
	out.Lua = luaHealth(obj, script)
	res, err := status.Compute(obj)
	if err != nil {
		out.Kstatus = &Health{Status: "Error", Message: err.Error()}
	} else {
		out.Kstatus = &Health{Status: res.Status.String(), Message: res.Message}
	}
	return out, nil
}

func main() {
	scriptPath := flag.String("script", "", "path of the Argo CD health Lua script")
	flag.Parse()
	if *scriptPath == "" {
		fmt.Fprintln(os.Stderr, "usage: countersign-health -script health.lua [DIR | FILE.json ... | -]")
		os.Exit(2)
	}
	scriptBytes, err := os.ReadFile(*scriptPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	script := string(scriptBytes)
	enc := json.NewEncoder(os.Stdout)
	emit := func(source string, data []byte) {
		r, err := evaluate(source, data, script)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}

	args := flag.Args()
	if len(args) == 0 || (len(args) == 1 && args[0] == "-") {
		scanner := bufio.NewScanner(os.Stdin)
		scanner.Buffer(make([]byte, 0, 1<<20), 16<<20)
		n := 0
		for scanner.Scan() {
			n++
			line := strings.TrimSpace(scanner.Text())
			if line == "" {
				continue
			}
			emit(fmt.Sprintf("stdin:%d", n), []byte(line))
		}
		if err := scanner.Err(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var files []string
	for _, arg := range args {
		info, err := os.Stat(arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if !info.IsDir() {
			files = append(files, arg)
			continue
		}
		matches, err := filepath.Glob(filepath.Join(arg, "*.json"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		sort.Strings(matches)
		files = append(files, matches...)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		emit(file, data)
	}
}
