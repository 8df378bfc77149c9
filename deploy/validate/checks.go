package main

import (
	"fmt"
	"net"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// partitionsAnnotation on a ScaledObject with Kafka triggers: the partition count of the
// topics it scales on, which maxReplicaCount must not exceed (a replica beyond it would get
// no partition and sit idle).
const partitionsAnnotation = "fnmill.dev/kafka-partitions"

// triggerMetadata lists the metadata keys KEDA's kafka and rabbitmq scalers read (KEDA
// v2.21, pkg/scalers): the metadata is a plain map, so a misspelt key would otherwise pass.
var triggerMetadata = map[string][]string{
	"kafka": {"bootstrapServers", "consumerGroup", "topic", "partitionLimitation", "lagThreshold",
		"activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers", "excludePersistentLag",
		"scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
		"fullMetadata", "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion"},
	"rabbitmq": {"queueName", "mode", "queueLength", "value", "activationValue", "host", "protocol",
		"vhostName", "useRegex", "excludeUnacknowledged", "pageSize", "operation", "timeout", "unsafeSsl"},
}

// fnmillConfig is the part of fnmill.toml the checks read.
type fnmillConfig struct {
	Runtime struct {
		ShutdownGrace string `toml:"shutdown_grace"`
	} `toml:"runtime"`
	Admin struct {
		Listen string `toml:"listen"`
	} `toml:"admin"`
	Sources     map[string]map[string]any `toml:"sources"`
	Sinks       map[string]map[string]any `toml:"sinks"`
	DataSources map[string]map[string]any `toml:"data_sources"`
	Functions   map[string]map[string]any `toml:"functions"`
}

// podConfig is a workload's fnmill container with the config it runs.
type podConfig struct {
	w         workload
	container *corev1.Container
	config    fnmillConfig
	// role is what `fnmill run --role` the container runs: all, compute or io.
	role string
}

// connectionLimitsAnnotation on an IO-tier workload: the connections each data source's
// database allows it, `name=N` comma-separated. Its replicas (plus those a rolling update
// adds) times the data source's pool_size must stay within them.
const connectionLimitsAnnotation = "fnmill.dev/connection-limits"

// configPathOf is the config file the container's args name (`-c PATH`), "" without one.
func configPathOf(c *corev1.Container) string {
	path := ""
	for i, a := range c.Args {
		if (a == "-c" || a == "--config") && i+1 < len(c.Args) {
			path = c.Args[i+1]
		}
	}
	return path
}

// fnmillContainer is the workload's container named fnmill, nil without one.
func fnmillContainer(w workload) *corev1.Container {
	for i := range w.pod.Spec.Containers {
		if w.pod.Spec.Containers[i].Name == "fnmill" {
			return &w.pod.Spec.Containers[i]
		}
	}
	return nil
}

// roleOf is the container's `--role` (from its args, else FNMILL_ROLE), `all` by default.
func roleOf(c *corev1.Container) string {
	for i, a := range c.Args {
		if a == "--role" && i+1 < len(c.Args) {
			return c.Args[i+1]
		}
		if r, ok := strings.CutPrefix(a, "--role="); ok {
			return r
		}
	}
	for _, e := range c.Env {
		if e.Name == "FNMILL_ROLE" {
			return e.Value
		}
	}
	return "all"
}

// checkFnmill checks what spans objects and the config; it returns one line per problem.
func checkFnmill(set *objects) []string {
	var problems []string
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	pods := map[string]*podConfig{}
	if len(set.workloads) == 0 {
		fail("no Deployment or StatefulSet rendered")
	}
	for _, w := range set.workloads {
		pc, errs := checkWorkload(set, w)
		problems = append(problems, errs...)
		if pc != nil {
			pods[w.kind+"/"+w.name] = pc
		}
	}
	for _, svc := range set.services {
		if w := selects(set, svc.Spec.Selector); w == nil {
			fail("Service/%s: its selector %v matches no pod template", svc.Name, svc.Spec.Selector)
		} else if pc := pods[w.kind+"/"+w.name]; pc != nil {
			for _, p := range svc.Spec.Ports {
				if port, ok := containerPort(pc.container, p.TargetPort); !ok {
					fail("Service/%s: targetPort %s is no port of %s/%s", svc.Name, p.TargetPort.String(), w.kind, w.name)
				} else if admin, _ := adminPort(pc.config); port != admin {
					fail("Service/%s: targetPort %d is not the admin port %d", svc.Name, port, admin)
				}
			}
		}
	}
	for _, pdb := range set.pdbs {
		if pdb.Spec.Selector == nil || selects(set, pdb.Spec.Selector.MatchLabels) == nil {
			fail("PodDisruptionBudget/%s: its selector matches no pod template", pdb.Name)
		}
	}
	problems = append(problems, checkScaling(set, pods)...)
	problems = append(problems, checkTiers(pods)...)
	return problems
}

// remoteOf is a data source's `remote` table, nil without one.
func remoteOf(ds map[string]any) map[string]any {
	r, _ := ds["remote"].(map[string]any)
	return r
}

// poolSize is a data source's pool_size, with fnmill's defaults.
func poolSize(ds map[string]any) int32 {
	if n, ok := ds["pool_size"].(int64); ok {
		return int32(n)
	}
	if ds["kind"] == "redis" {
		return 4
	}
	return 10
}

// connectionLimit reads data source `name`'s limit from the workload's annotation.
func connectionLimit(w workload, name string) (int32, bool, error) {
	text, ok := w.annotations[connectionLimitsAnnotation]
	if !ok {
		return 0, false, nil
	}
	for _, part := range strings.Split(text, ",") {
		k, v, found := strings.Cut(strings.TrimSpace(part), "=")
		if !found {
			return 0, false, fmt.Errorf("%s: %q is not name=N", connectionLimitsAnnotation, part)
		}
		if k == name {
			n, err := strconv.Atoi(v)
			if err != nil {
				return 0, false, fmt.Errorf("%s: %q is not a number", connectionLimitsAnnotation, v)
			}
			return int32(n), true, nil
		}
	}
	return 0, false, nil
}

// endpointOf is how a remote table names its NATS server, for comparing two of them.
func endpointOf(r map[string]any) string {
	for _, k := range []string{"url", "nats", "url_env", "url_file"} {
		if v, ok := r[k].(string); ok {
			return k + "=" + v
		}
	}
	return ""
}

// checkTiers checks the IO tier against the compute workloads that use it: every data source a
// compute workload reaches over NATS is served by an IO workload on the same subject and NATS,
// with the same kind and at least the same grants (the IO tier checks every call against its
// own config), and each IO workload's connections stay within their databases' limits.
func checkTiers(pods map[string]*podConfig) []string {
	var problems []string
	type server struct {
		pc   *podConfig
		name string
		ds   map[string]any
	}
	bySubject := map[string][]server{}
	for _, key := range sortedKeys(pods) {
		pc := pods[key]
		if pc.role != "io" {
			continue
		}
		fail := func(format string, args ...any) {
			problems = append(problems, fmt.Sprintf("%s/%s: ", pc.w.kind, pc.w.name)+fmt.Sprintf(format, args...))
		}
		served := 0
		for _, name := range sortedKeys(pc.config.DataSources) {
			ds := pc.config.DataSources[name]
			r := remoteOf(ds)
			if r == nil {
				continue
			}
			served++
			subject, _ := r["subject"].(string)
			bySubject[subject] = append(bySubject[subject], server{pc, name, ds})
			limit, ok, err := connectionLimit(pc.w, name)
			if err != nil {
				fail("%v", err)
			} else if ok {
				pool := poolSize(ds)
				most := (pc.w.replicas + pc.w.surge) * pool
				if most > limit {
					fail("data_sources.%s: %d replicas (+%d during a rolling update) × pool_size %d = %d connections, above its limit of %d (%s)",
						name, pc.w.replicas, pc.w.surge, pool, most, limit, connectionLimitsAnnotation)
				}
			}
		}
		if served == 0 {
			fail("runs --role io, but no data source of its config has a remote table: it would serve nothing")
		}
	}
	for _, key := range sortedKeys(pods) {
		pc := pods[key]
		if pc.role != "compute" {
			continue
		}
		fail := func(format string, args ...any) {
			problems = append(problems, fmt.Sprintf("%s/%s: ", pc.w.kind, pc.w.name)+fmt.Sprintf(format, args...))
		}
		for _, name := range sortedKeys(pc.config.DataSources) {
			ds := pc.config.DataSources[name]
			r := remoteOf(ds)
			if r == nil {
				continue
			}
			subject, _ := r["subject"].(string)
			servers := bySubject[subject]
			if len(servers) == 0 {
				fail("data_sources.%s.remote.subject %q: no --role io workload serves it, so its calls would fail as unavailable", name, subject)
				continue
			}
			for _, sv := range servers {
				at := fmt.Sprintf("%s/%s (data_sources.%s)", sv.pc.w.kind, sv.pc.w.name, sv.name)
				if sv.ds["kind"] != ds["kind"] {
					fail("data_sources.%s is a %v data source, but %s serving %q is %v", name, ds["kind"], at, subject, sv.ds["kind"])
				}
				if endpointOf(remoteOf(sv.ds)) != endpointOf(r) {
					fail("data_sources.%s.remote names NATS as %s, but %s as %s: they would not meet", name, endpointOf(r), at, endpointOf(remoteOf(sv.ds)))
				}
				for _, fname := range sortedKeys(pc.config.Functions) {
					f := pc.config.Functions[fname]
					ioF := sv.pc.config.Functions[fname]
					if contains(f["data_sources"], name) && !contains(ioF["data_sources"], sv.name) {
						fail("functions.%s is granted data source %s, which %s does not grant it: its calls would be refused as not-granted", fname, name, at)
					}
					buckets, _ := ds["buckets"].(map[string]any)
					for _, b := range sortedKeys(buckets) {
						if contains(f["buckets"], b) && !contains(ioF["buckets"], b) {
							fail("functions.%s is granted bucket %s, which %s does not grant it: its calls would be refused as access-denied", fname, b, at)
						}
					}
				}
			}
		}
	}
	return problems
}

// checkWorkload checks one Deployment or StatefulSet against the config it mounts.
func checkWorkload(set *objects, w workload) (*podConfig, []string) {
	var problems []string
	fail := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s/%s: ", w.kind, w.name)+fmt.Sprintf(format, args...))
	}
	spec := &w.pod.Spec
	c := fnmillContainer(w)
	if c == nil {
		fail("no container named fnmill")
		return nil, problems
	}
	// The config: `-c PATH` in the args, PATH inside a ConfigMap volume's mount.
	configPath := configPathOf(c)
	if configPath == "" {
		fail("the fnmill container's args name no config (-c PATH)")
		return nil, problems
	}
	mount, volume := mountOf(spec, c, configPath)
	if volume == nil || volume.ConfigMap == nil {
		fail("the config %s is not in a ConfigMap volume", configPath)
		return nil, problems
	}
	cm := set.configMaps[volume.ConfigMap.Name]
	if cm == nil {
		fail("ConfigMap %q is not rendered", volume.ConfigMap.Name)
		return nil, problems
	}
	key := strings.TrimPrefix(strings.TrimPrefix(configPath, mount.MountPath), "/")
	text, ok := cm.Data[key]
	if !ok {
		fail("ConfigMap %q has no key %q (the config %s)", cm.Name, key, configPath)
		return nil, problems
	}
	var cfg fnmillConfig
	if _, err := toml.Decode(text, &cfg); err != nil {
		fail("ConfigMap %q: %s is not TOML: %v", cm.Name, key, err)
		return nil, problems
	}
	pc := &podConfig{w: w, container: c, config: cfg, role: roleOf(c)}
	if pc.role != "all" && pc.role != "compute" && pc.role != "io" {
		fail("--role %q: fnmill knows all, compute and io", pc.role)
	}

	// Probes: /healthz for liveness, /readyz for readiness, on the admin port.
	admin, err := adminPort(cfg)
	if err != nil {
		fail("%v", err)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"livenessProbe", c.LivenessProbe, "/healthz"}, {"readinessProbe", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			fail("%s is not an httpGet probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			fail("%s path %q; fnmill serves it on %q", p.name, p.probe.HTTPGet.Path, p.path)
		}
		if port, ok := containerPort(c, p.probe.HTTPGet.Port); !ok || port != admin {
			fail("%s port %s is not the admin port %d ([admin] listen = %q)", p.name, p.probe.HTTPGet.Port.String(), admin, cfg.Admin.Listen)
		}
	}
	if sp := c.StartupProbe; sp != nil && (sp.HTTPGet == nil || sp.HTTPGet.Path != "/healthz") {
		fail("startupProbe is not an httpGet of /healthz")
	}

	// Shutdown: the pod must not be killed before fnmill's own grace period ends.
	grace := 20 * time.Second
	if cfg.Runtime.ShutdownGrace != "" {
		if grace, err = time.ParseDuration(cfg.Runtime.ShutdownGrace); err != nil {
			fail("runtime.shutdown_grace %q: %v", cfg.Runtime.ShutdownGrace, err)
		}
	}
	if spec.TerminationGracePeriodSeconds == nil || time.Duration(*spec.TerminationGracePeriodSeconds)*time.Second <= grace {
		fail("terminationGracePeriodSeconds must be above runtime.shutdown_grace (%s)", grace)
	}

	// Resources and privileges.
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		fail("the fnmill container has no cpu and memory requests")
	}
	if c.Resources.Limits.Memory().IsZero() {
		fail("the fnmill container has no memory limit")
	}
	sc := spec.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		fail("the pod does not set runAsNonRoot")
	}

	// Secrets: every file the config names is in a Secret volume (and in the Secret, when it is
	// rendered); every environment variable it names is set.
	for _, ref := range secretRefs(cfg, pc.role) {
		if ref.file != "" {
			m, v := mountOf(spec, c, ref.file)
			if v == nil || v.Secret == nil {
				fail("%s = %q is not in a mounted Secret", ref.key, ref.file)
				continue
			}
			if s := set.secrets[v.Secret.SecretName]; s == nil && len(set.secrets) > 0 {
				fail("%s = %q: Secret %q is not rendered", ref.key, ref.file, v.Secret.SecretName)
			} else if s != nil {
				k := strings.TrimPrefix(strings.TrimPrefix(ref.file, m.MountPath), "/")
				if _, ok := s.Data[k]; !ok {
					if _, ok := s.StringData[k]; !ok {
						fail("%s = %q: Secret %q has no key %q", ref.key, ref.file, s.Name, k)
					}
				}
			}
		}
		if ref.env != "" && !hasEnv(c, ref.env) {
			fail("%s names the environment variable %s, which the container does not set", ref.key, ref.env)
		}
	}
	for _, src := range sortedKeys(cfg.Sources) {
		if props, ok := cfg.Sources[src]["secret_properties"].(map[string]any); ok {
			if _, ok := props["group.instance.id"]; ok && w.kind != "StatefulSet" {
				fail("sources.%s sets group.instance.id (static membership), which needs the stable pod names of a StatefulSet", src)
			}
		}
	}
	return pc, problems
}

// checkScaling checks the KEDA objects against the workloads they scale and their configs.
func checkScaling(set *objects, pods map[string]*podConfig) []string {
	var problems []string
	for _, so := range set.scaled {
		fail := func(format string, args ...any) {
			problems = append(problems, fmt.Sprintf("ScaledObject/%s: ", so.Name)+fmt.Sprintf(format, args...))
		}
		ref := so.Spec.ScaleTargetRef
		if ref == nil {
			fail("no scaleTargetRef")
			continue
		}
		kind := ref.Kind
		if kind == "" {
			kind = "Deployment"
		}
		pc := pods[kind+"/"+ref.Name]
		if pc == nil {
			fail("scaleTargetRef %s/%s is not a rendered fnmill workload", kind, ref.Name)
			continue
		}
		lo, hi := int32(1), int32(100)
		if so.Spec.MinReplicaCount != nil {
			lo = *so.Spec.MinReplicaCount
		}
		if so.Spec.MaxReplicaCount != nil {
			hi = *so.Spec.MaxReplicaCount
		}
		if lo > hi {
			fail("minReplicaCount %d is above maxReplicaCount %d", lo, hi)
		}
		watched := map[string]bool{}
		for i, t := range so.Spec.Triggers {
			at := fmt.Sprintf("triggers[%d] (%s)", i, t.Type)
			for _, k := range sortedKeys(t.Metadata) {
				if known, ok := triggerMetadata[t.Type]; ok && !containsString(known, k) {
					fail("%s: unknown metadata key %q", at, k)
				}
			}
			if t.AuthenticationRef != nil {
				ta := set.triggerAuths[t.AuthenticationRef.Name]
				if ta == nil {
					fail("%s: TriggerAuthentication %q is not rendered", at, t.AuthenticationRef.Name)
				} else {
					for _, s := range ta.Spec.SecretTargetRef {
						if sec := set.secrets[s.Name]; sec == nil && len(set.secrets) > 0 {
							fail("TriggerAuthentication %q: Secret %q is not rendered", ta.Name, s.Name)
						} else if sec != nil {
							if _, ok := sec.Data[s.Key]; !ok {
								if _, ok := sec.StringData[s.Key]; !ok {
									fail("TriggerAuthentication %q: Secret %q has no key %q", ta.Name, s.Name, s.Key)
								}
							}
						}
					}
				}
			}
			switch t.Type {
			case "kafka":
				group, topic := t.Metadata["consumerGroup"], t.Metadata["topic"]
				src := ""
				for _, name := range sortedKeys(pc.config.Sources) {
					s := pc.config.Sources[name]
					if s["kind"] == "kafka" && s["group"] == group && contains(s["topics"], topic) {
						src = name
					}
				}
				if src == "" {
					fail("%s: no Kafka source of %s/%s consumes topic %q in group %q", at, kind, ref.Name, topic, group)
					continue
				}
				watched[src] = true
				if b := pc.config.Sources[src]["brokers"]; t.Metadata["bootstrapServers"] != b {
					fail("%s: bootstrapServers %q, but sources.%s.brokers is %q", at, t.Metadata["bootstrapServers"], src, b)
				}
				if p := t.Metadata["offsetResetPolicy"]; p != "earliest" {
					fail("%s: offsetResetPolicy %q; fnmill's groups start at the earliest offset (auto.offset.reset), so KEDA must count lag from there too", at, p)
				}
				if t.Metadata["allowIdleConsumers"] == "true" {
					fail("%s: allowIdleConsumers would scale past the partition count", at)
				}
				parts, err := strconv.Atoi(so.Annotations[partitionsAnnotation])
				if err != nil {
					fail("a Kafka trigger needs the %s annotation (the topics' partition count)", partitionsAnnotation)
				} else if int(hi) > parts {
					fail("maxReplicaCount %d is above the partition count %d", hi, parts)
				}
			case "rabbitmq":
				queue := t.Metadata["queueName"]
				src := ""
				for _, name := range sortedKeys(pc.config.Sources) {
					s := pc.config.Sources[name]
					if s["kind"] == "amqp" && s["queue"] == queue {
						src = name
					}
				}
				if src == "" {
					fail("%s: no AMQP source of %s/%s consumes queue %q", at, kind, ref.Name, queue)
					continue
				}
				watched[src] = true
			default:
				fail("%s: fnmill scales on kafka or rabbitmq triggers only", at)
			}
		}
		for _, name := range sortedKeys(pc.config.Sources) {
			if k := pc.config.Sources[name]["kind"]; (k == "kafka" || k == "amqp") && !watched[name] {
				fail("sources.%s of %s/%s has no trigger: its backlog would not scale the workload", name, kind, ref.Name)
			}
		}
	}
	return problems
}

// secretRef is a key of the config whose value comes from a file or the environment.
type secretRef struct{ key, file, env string }

// secretRefs lists the config's secret files and environment variables that a process of
// `role` reads: `url_file`, `url_env`, the TLS files, every `secret_properties` entry, and a
// remote table's. A compute process reads none of a data source its IO tier serves but the
// remote's; an IO process reads no source's or sink's.
func secretRefs(cfg fnmillConfig, role string) []secretRef {
	var refs []secretRef
	sections := map[string]map[string]map[string]any{"sources": cfg.Sources, "sinks": cfg.Sinks, "data_sources": cfg.DataSources}
	for _, section := range []string{"sources", "sinks", "data_sources"} {
		if section != "data_sources" && role == "io" {
			continue
		}
		for _, name := range sortedKeys(sections[section]) {
			entry := sections[section][name]
			prefix := section + "." + name + "."
			remote := remoteOf(entry)
			if section == "data_sources" && remote != nil && role != "all" {
				refs = append(refs, entryRefs(prefix+"remote.", remote)...)
			}
			pool := section != "data_sources" || role == "all" || (role == "compute") == (remote == nil)
			if pool {
				refs = append(refs, entryRefs(prefix, entry)...)
			}
		}
	}
	return refs
}

// entryRefs lists the secret files and variables of one config table.
func entryRefs(prefix string, entry map[string]any) []secretRef {
	var refs []secretRef
	for _, k := range []string{"url_file", "tls_ca_file", "tls_cert_file", "tls_key_file", "credentials_file"} {
		if f, ok := entry[k].(string); ok {
			refs = append(refs, secretRef{key: prefix + k, file: f})
		}
	}
	if e, ok := entry["url_env"].(string); ok {
		refs = append(refs, secretRef{key: prefix + "url_env", env: e})
	}
	if props, ok := entry["properties"].(map[string]any); ok {
		for _, k := range []string{"ssl.ca.location", "ssl.certificate.location", "ssl.key.location"} {
			if f, ok := props[k].(string); ok {
				refs = append(refs, secretRef{key: prefix + "properties." + k, file: f})
			}
		}
	}
	if props, ok := entry["secret_properties"].(map[string]any); ok {
		for _, k := range sortedKeys(props) {
			from, _ := props[k].(map[string]any)
			f, _ := from["file"].(string)
			e, _ := from["env"].(string)
			refs = append(refs, secretRef{key: prefix + "secret_properties." + k, file: f, env: e})
		}
	}
	return refs
}

// adminPort is the port of `[admin] listen`.
func adminPort(cfg fnmillConfig) (int32, error) {
	if cfg.Admin.Listen == "" {
		return 0, fmt.Errorf("the config has no [admin] listen: no probes could be answered")
	}
	_, port, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		return 0, fmt.Errorf("[admin] listen %q: %v", cfg.Admin.Listen, err)
	}
	n, err := strconv.Atoi(port)
	return int32(n), err
}

// containerPort resolves a probe's or Service's port (a number or a port name).
func containerPort(c *corev1.Container, p intstr.IntOrString) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, true
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// mountOf finds the volume mount of c that holds file, and its volume.
func mountOf(spec *corev1.PodSpec, c *corev1.Container, file string) (*corev1.VolumeMount, *corev1.Volume) {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		dir := path.Clean(m.MountPath)
		if strings.HasPrefix(path.Clean(file), dir+"/") && (best == nil || len(dir) > len(best.MountPath)) {
			best = m
		}
	}
	if best == nil {
		return nil, nil
	}
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == best.Name {
			return best, &spec.Volumes[i]
		}
	}
	return best, nil
}

func hasEnv(c *corev1.Container, name string) bool {
	for _, e := range c.Env {
		if e.Name == name {
			return true
		}
	}
	return false
}

// selects returns the workload whose pod labels the selector matches.
func selects(set *objects, selector map[string]string) *workload {
	if len(selector) == 0 {
		return nil
	}
	for i := range set.workloads {
		if labels.SelectorFromSet(selector).Matches(labels.Set(set.workloads[i].pod.Labels)) {
			return &set.workloads[i]
		}
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, i := range list {
		if i == s {
			return true
		}
	}
	return false
}

func contains(list any, s string) bool {
	items, _ := list.([]any)
	for _, i := range items {
		if i == s {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
