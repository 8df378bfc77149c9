// Command validate renders fnmill's Kustomize trees and checks every object without a cluster.
//
//	go run . [-out DIR] KUSTOMIZATION_DIR...
//
// For each directory it runs the same build as `kustomize build` (sigs.k8s.io/kustomize/api),
// then decodes every rendered object strictly (unknown fields are errors) into the Kubernetes
// API types (k8s.io/api) or KEDA's (github.com/kedacore/keda/v2/apis/keda/v1alpha1), so a
// misspelt field fails. It then checks what spans objects: probes on the admin port the
// config's `[admin] listen` names, the termination grace period above `runtime.shutdown_grace`,
// every secret file the config names mounted from a Secret, selectors that match their pods,
// and KEDA triggers that watch the config's consumer groups, topics and queues with no more
// replicas than a Kafka topic has partitions.
//
// With -out, each directory's rendered YAML and the config files of its ConfigMaps are written
// under DIR/<n>/ (n = the argument's position), so `fnmill check` can run on them. It prints
// one line per object and exits 1 with one line per problem.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	out := flag.String("out", "", "write each rendering and its config files under this directory")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: validate [-out DIR] KUSTOMIZATION_DIR...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	failed := false
	for i, dir := range flag.Args() {
		problems := validateDir(dir, *out, i)
		for _, p := range problems {
			fmt.Printf("error: %s: %s\n", dir, p)
		}
		if len(problems) > 0 {
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

// validateDir renders one kustomization and returns its problems.
func validateDir(dir, out string, index int) []string {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return []string{fmt.Sprintf("kustomize build: %v", oneLine(err.Error()))}
	}
	rendered, err := resources.AsYaml()
	if err != nil {
		return []string{fmt.Sprintf("rendering YAML: %v", err)}
	}
	set := &objects{}
	var problems []string
	for _, res := range resources.Resources() {
		raw, err := res.MarshalJSON()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", res.CurId(), err))
			continue
		}
		obj, err := decodeStrict(raw)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s/%s: %v", res.GetKind(), res.GetName(), err))
			continue
		}
		set.add(obj)
		fmt.Printf("%s: %s/%s ok\n", dir, res.GetKind(), res.GetName())
	}
	problems = append(problems, checkFnmill(set)...)
	if out != "" {
		if err := write(filepath.Join(out, fmt.Sprint(index)), rendered, set); err != nil {
			problems = append(problems, err.Error())
		}
	}
	return problems
}

// write stores the rendering as rendered.yaml, each ConfigMap's fnmill.toml as
// <configmap>.toml, and the roles (`fnmill run --role`) of the workloads that run it as
// <configmap>.roles, one a line.
func write(dir string, rendered []byte, set *objects) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "rendered.yaml"), rendered, 0o644); err != nil {
		return err
	}
	roles := map[string][]string{}
	for _, w := range set.workloads {
		c := fnmillContainer(w)
		if c == nil {
			continue
		}
		if _, v := mountOf(&w.pod.Spec, c, configPathOf(c)); v != nil && v.ConfigMap != nil {
			if r := roleOf(c); !containsString(roles[v.ConfigMap.Name], r) {
				roles[v.ConfigMap.Name] = append(roles[v.ConfigMap.Name], r)
			}
		}
	}
	names := make([]string, 0, len(set.configMaps))
	for name := range set.configMaps {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		text, ok := set.configMaps[name].Data[configKey]
		if !ok {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name+".toml"), []byte(text), 0o644); err != nil {
			return err
		}
		if r := roles[name]; len(r) > 0 {
			if err := os.WriteFile(filepath.Join(dir, name+".roles"), []byte(strings.Join(r, "\n")+"\n"), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// decodeJSON decodes into v, refusing unknown fields and trailing data.
func decodeJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the object")
	}
	return nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
