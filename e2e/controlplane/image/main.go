// Command image assembles the final stage of the repository's Containerfile
// without a container engine, from a staging directory standing in for the
// build stage's filesystem:
//
//	image -containerfile Containerfile -context . -stage build=DIR \
//	      -layout OUT/oci -rootfs OUT/rootfs [-docker-tar OUT/countersign.tar] [-tag countersign:dev]
//
// It understands only what a final stage on an empty base needs (FROM
// scratch, COPY, USER, ENTRYPOINT, CMD, LABEL, ENV, EXPOSE) and fails on
// anything else, so the Containerfile and this build cannot silently drift
// apart. Each COPY becomes one layer, like `docker build`; files are owned by
// root (or COPY --chown, numeric only), keep COPY --chmod's mode (else the
// source file's), and carry a fixed timestamp (SOURCE_DATE_EPOCH, default
// 0), so the same inputs give the same digest.
//
// It writes an OCI image layout, optionally a tarball for `docker load` /
// `podman load`, extracts the flattened root filesystem to a directory, and
// prints the image's digest and size (compressed layers plus config).
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// instruction is one Containerfile instruction, continuation lines joined.
type instruction struct {
	line    int
	keyword string // upper case
	args    string // the rest of the line, trimmed
}

// copyOp is one COPY of the final stage.
type copyOp struct {
	line  int
	from  string // stage name, "" for the build context
	src   string
	dst   string
	mode  *os.FileMode
	uid   int
	gid   int
	canon string // the instruction as written, for the layer's history
}

// finalStage is what the final stage declares.
type finalStage struct {
	platform string
	copies   []copyOp
	config   v1.Config
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

type stageFlags map[string]string

func (s stageFlags) String() string { return fmt.Sprint(map[string]string(s)) }
func (s stageFlags) Set(v string) error {
	k, dir, ok := strings.Cut(v, "=")
	if !ok || k == "" || dir == "" {
		return fmt.Errorf("want NAME=DIR, got %q", v)
	}
	s[k] = dir
	return nil
}

func run() error {
	containerfile := flag.String("containerfile", "Containerfile", "the Containerfile to read")
	context := flag.String("context", ".", "the build context (sources of COPY without --from)")
	stages := stageFlags{}
	flag.Var(stages, "stage", "NAME=DIR: DIR stands in for the filesystem of build stage NAME (repeatable)")
	layoutDir := flag.String("layout", "", "write an OCI image layout to this directory (replaced)")
	rootfs := flag.String("rootfs", "", "extract the flattened root filesystem to this directory (replaced)")
	dockerTar := flag.String("docker-tar", "", "also write a tarball for `docker load` / `podman load`")
	tag := flag.String("tag", "countersign:dev", "the image's name in the layout and the tarball")
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if *layoutDir == "" || *rootfs == "" {
		return errors.New("-layout and -rootfs are required")
	}

	epoch, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	text, err := os.ReadFile(*containerfile)
	if err != nil {
		return err
	}
	stage, err := parse(*containerfile, string(text))
	if err != nil {
		return err
	}
	img, err := assemble(stage, *context, stages, epoch)
	if err != nil {
		return err
	}

	ref, err := name.NewTag(*tag)
	if err != nil {
		return err
	}
	if err := writeLayout(img, *layoutDir, ref); err != nil {
		return err
	}
	if *dockerTar != "" {
		if err := tarball.WriteToFile(*dockerTar, ref, img); err != nil {
			return fmt.Errorf("write %s: %w", *dockerTar, err)
		}
	}
	if err := extract(img, *rootfs); err != nil {
		return err
	}

	digest, err := img.Digest()
	if err != nil {
		return err
	}
	size, err := imageSize(img)
	if err != nil {
		return err
	}
	fmt.Printf("image %s %s\n", ref, digest)
	fmt.Printf("size %d bytes (%.1f MiB: compressed layers + config)\n", size, float64(size)/(1<<20))
	fmt.Printf("layout %s\n", *layoutDir)
	fmt.Printf("rootfs %s\n", *rootfs)
	return nil
}

func sourceDateEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", v, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

// instructions splits a Containerfile into instructions: comments and blank
// lines dropped, lines ending in a backslash joined with the next.
func instructions(text string) []instruction {
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimRight(raw, " \t\r")
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\"))
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(line)
		full := strings.TrimSpace(cur.String())
		cur.Reset()
		if full == "" {
			continue
		}
		keyword, args, _ := strings.Cut(full, " ")
		out = append(out, instruction{line: start, keyword: strings.ToUpper(keyword), args: strings.TrimSpace(args)})
	}
	return out
}

// parse reads the final stage (after the last FROM) of a Containerfile.
func parse(file, text string) (*finalStage, error) {
	all := instructions(text)
	last := -1
	named := map[string]bool{}
	for i, ins := range all {
		if ins.keyword != "FROM" {
			continue
		}
		last = i
		words := strings.Fields(ins.args)
		if n := len(words); n >= 3 && strings.EqualFold(words[n-2], "AS") {
			named[strings.ToLower(words[n-1])] = true
		}
	}
	if last < 0 {
		return nil, fmt.Errorf("%s: no FROM", file)
	}
	fail := func(ins instruction, format string, a ...any) error {
		return fmt.Errorf("%s:%d: %s %s: %s", file, ins.line, ins.keyword, ins.args, fmt.Sprintf(format, a...))
	}

	stage := &finalStage{platform: "linux/amd64"}
	from := all[last]
	words := strings.Fields(from.args)
	var platformSet bool
	for len(words) > 0 && strings.HasPrefix(words[0], "--") {
		flagName, value, _ := strings.Cut(words[0], "=")
		if flagName != "--platform" || value == "" {
			return nil, fail(from, "only --platform=OS/ARCH is understood")
		}
		stage.platform, platformSet = value, true
		words = words[1:]
	}
	if len(words) == 0 || words[0] != "scratch" || (len(words) != 1 && len(words) != 3) {
		return nil, fail(from, "the final stage must be FROM scratch: this build has no base images")
	}
	if !platformSet {
		return nil, fail(from, "say --platform=linux/ARCH: the image's architecture must be written down")
	}

	stage.config.Labels = map[string]string{}
	for _, ins := range all[last+1:] {
		switch ins.keyword {
		case "COPY":
			op, err := parseCopy(ins, named)
			if err != nil {
				return nil, fail(ins, "%v", err)
			}
			stage.copies = append(stage.copies, op)
		case "USER":
			if strings.ContainsAny(ins.args, " \t") || ins.args == "" {
				return nil, fail(ins, "want USER UID[:GID]")
			}
			stage.config.User = ins.args
		case "ENTRYPOINT", "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(ins.args), &argv); err != nil || len(argv) == 0 {
				return nil, fail(ins, "only the exec (JSON array) form is understood: the image has no shell")
			}
			if ins.keyword == "ENTRYPOINT" {
				stage.config.Entrypoint = argv
			} else {
				stage.config.Cmd = argv
			}
		case "LABEL":
			pairs, err := keyValues(ins.args)
			if err != nil {
				return nil, fail(ins, "%v", err)
			}
			for _, kv := range pairs {
				stage.config.Labels[kv[0]] = kv[1]
			}
		case "ENV":
			pairs, err := keyValues(ins.args)
			if err != nil {
				return nil, fail(ins, "%v", err)
			}
			for _, kv := range pairs {
				stage.config.Env = setEnv(stage.config.Env, kv[0], kv[1])
			}
		case "EXPOSE":
			for _, port := range strings.Fields(ins.args) {
				number, proto, hasProto := strings.Cut(port, "/")
				if !hasProto {
					proto = "tcp"
				}
				if _, err := strconv.ParseUint(number, 10, 16); err != nil || (proto != "tcp" && proto != "udp") {
					return nil, fail(ins, "want PORT[/tcp|/udp], got %q", port)
				}
				if stage.config.ExposedPorts == nil {
					stage.config.ExposedPorts = map[string]struct{}{}
				}
				stage.config.ExposedPorts[number+"/"+proto] = struct{}{}
			}
		default:
			return nil, fail(ins, "not understood by this engine-less build (e2e/controlplane/image): "+
				"teach it, or keep the final stage to FROM scratch, COPY, USER, ENTRYPOINT, CMD, LABEL, ENV, EXPOSE")
		}
	}
	if len(stage.copies) == 0 || len(stage.config.Entrypoint) == 0 {
		return nil, fmt.Errorf("%s: the final stage has no COPY or no ENTRYPOINT", file)
	}
	return stage, nil
}

func parseCopy(ins instruction, named map[string]bool) (copyOp, error) {
	op := copyOp{line: ins.line, canon: "COPY " + ins.args}
	words := strings.Fields(ins.args)
	for len(words) > 0 && strings.HasPrefix(words[0], "--") {
		flagName, value, _ := strings.Cut(words[0], "=")
		switch flagName {
		case "--from":
			if !named[strings.ToLower(value)] {
				return op, fmt.Errorf("--from=%s is not a stage of this file", value)
			}
			op.from = strings.ToLower(value)
		case "--chmod":
			m, err := strconv.ParseUint(value, 8, 32)
			if err != nil || m > 0o7777 {
				return op, fmt.Errorf("want --chmod=OCTAL, got %q", value)
			}
			mode := os.FileMode(m)
			op.mode = &mode
		case "--chown":
			u, g, ok := strings.Cut(value, ":")
			if !ok {
				g = u
			}
			uid, err1 := strconv.Atoi(u)
			gid, err2 := strconv.Atoi(g)
			if err1 != nil || err2 != nil || uid < 0 || gid < 0 {
				return op, fmt.Errorf("only a numeric --chown=UID:GID is understood, got %q", value)
			}
			op.uid, op.gid = uid, gid
		default:
			return op, fmt.Errorf("flag %s not understood", flagName)
		}
		words = words[1:]
	}
	if len(words) != 2 || strings.HasPrefix(words[0], "[") {
		return op, errors.New("only COPY [flags] SRC DST with one source is understood")
	}
	op.src, op.dst = words[0], words[1]
	if strings.ContainsAny(op.src, "*?[") {
		return op, errors.New("wildcards in the source are not understood")
	}
	if !path.IsAbs(op.dst) {
		return op, errors.New("the destination must be absolute (there is no WORKDIR)")
	}
	if strings.HasSuffix(op.dst, "/") {
		op.dst += path.Base(op.src)
	}
	op.dst = path.Clean(op.dst)
	return op, nil
}

// keyValues splits `k=v k2="v 2"` (double quotes and backslash escapes) into pairs.
func keyValues(s string) ([][2]string, error) {
	var words []string
	var cur strings.Builder
	inQuote, escaped, quoted := false, false, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped = true
		case r == '"':
			inQuote = !inQuote
			quoted = true
		case !inQuote && (r == ' ' || r == '\t'):
			if cur.Len() > 0 || quoted {
				words = append(words, cur.String())
				cur.Reset()
				quoted = false
			}
		default:
			cur.WriteRune(r)
		}
	}
	if inQuote || escaped {
		return nil, errors.New("unterminated quote or escape")
	}
	if cur.Len() > 0 || quoted {
		words = append(words, cur.String())
	}
	var out [][2]string
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("want KEY=VALUE, got %q (the legacy `KEY VALUE` form is not understood)", w)
		}
		out = append(out, [2]string{k, v})
	}
	if len(out) == 0 {
		return nil, errors.New("no KEY=VALUE")
	}
	return out, nil
}

func setEnv(env []string, k, v string) []string {
	for i, kv := range env {
		if strings.HasPrefix(kv, k+"=") {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
}

// assemble builds the image: one layer per COPY, then the config.
func assemble(stage *finalStage, context string, stages stageFlags, epoch time.Time) (v1.Image, error) {
	osName, arch, ok := strings.Cut(stage.platform, "/")
	if !ok || osName != "linux" || arch == "" || strings.Contains(arch, "/") {
		return nil, fmt.Errorf("platform %q: want linux/ARCH", stage.platform)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, op := range stage.copies {
		src, err := sourcePath(op, context, stages)
		if err != nil {
			return nil, err
		}
		data, err := layerTar(op, src, epoch)
		if err != nil {
			return nil, err
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(data)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   layer,
			History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: op.canon, Comment: "e2e/controlplane/image"},
		})
		if err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = osName, arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config = stage.config
	for i := range cf.History {
		cf.History[i].Created = v1.Time{Time: epoch}
	}
	return mutate.ConfigFile(img, cf)
}

// sourcePath resolves a COPY source: in the build context, or in the
// directory standing in for the named stage. Neither may be escaped.
func sourcePath(op copyOp, context string, stages stageFlags) (string, error) {
	root := context
	if op.from != "" {
		dir, ok := stages[op.from]
		if !ok {
			return "", fmt.Errorf("line %d: COPY --from=%s: no -stage %s=DIR given", op.line, op.from, op.from)
		}
		root = dir
	}
	for _, part := range strings.Split(op.src, "/") {
		if part == ".." {
			return "", fmt.Errorf("line %d: COPY %s: `..` is not understood", op.line, op.src)
		}
	}
	rel := path.Clean("/" + op.src)
	p := filepath.Join(root, filepath.FromSlash(rel))
	info, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("line %d: COPY %s: %w", op.line, op.src, err)
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("line %d: COPY %s: only regular files are understood", op.line, op.src)
	}
	return p, nil
}

// layerTar is the uncompressed layer of one COPY: the parent directories
// (root-owned, 0755) and the file.
func layerTar(op copyOp, src string, epoch time.Time) ([]byte, error) {
	content, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	info, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	mode := info.Mode().Perm()
	if op.mode != nil {
		mode = *op.mode
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var dirs []string
	for d := path.Dir(op.dst); d != "/"; d = path.Dir(d) {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755,
			ModTime: epoch, Format: tar.FormatPAX,
		}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg, Name: strings.TrimPrefix(op.dst, "/"), Mode: int64(mode),
		Uid: op.uid, Gid: op.gid, Size: int64(len(content)), ModTime: epoch, Format: tar.FormatPAX,
	}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeLayout(img v1.Image, dir string, ref name.Tag) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref.TagStr(),
		"io.containerd.image.name":          ref.String(),
	}))
}

// extract writes the flattened filesystem into dir (replaced), with the
// layers' modes, owners (when running as root) and timestamps.
func extract(img v1.Image, dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	root := os.Geteuid() == 0
	type stamp struct {
		path string
		t    time.Time
	}
	var stamps []stamp
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		rel := path.Clean("/" + h.Name)
		if rel == "/" {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(rel))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, tr); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		default:
			return fmt.Errorf("extract %s: tar entry type %q not understood", h.Name, h.Typeflag)
		}
		if root {
			if err := os.Lchown(target, h.Uid, h.Gid); err != nil {
				return err
			}
		}
		if err := os.Chmod(target, os.FileMode(h.Mode).Perm()); err != nil {
			return err
		}
		stamps = append(stamps, stamp{target, h.ModTime})
	}
	// Directories' times last: writing into them changes them.
	for i := len(stamps) - 1; i >= 0; i-- {
		if err := os.Chtimes(stamps[i].path, stamps[i].t, stamps[i].t); err != nil {
			return err
		}
	}
	return nil
}

// imageSize is what a registry stores for the image: the compressed layers
// and the config blob.
func imageSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	total := m.Config.Size
	for _, l := range m.Layers {
		total += l.Size
	}
	return total, nil
}
