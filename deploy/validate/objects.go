package main

import (
	"encoding/json"
	"fmt"
	"math"

	keda "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// configKey is the ConfigMap key that holds fnmill.toml.
const configKey = "fnmill.toml"

// workload is a Deployment or a StatefulSet: what runs fnmill pods.
type workload struct {
	kind string
	name string
	pod  *corev1.PodTemplateSpec
	// replicas is the workload's replica count (1 when unset).
	replicas int32
	// surge is how many pods a rolling update may add above replicas (a Deployment's
	// maxSurge; a StatefulSet replaces pods one by one and adds none).
	surge int32
	// annotations are the workload's own (not its pods').
	annotations map[string]string
}

// deploymentSurge resolves a Deployment's maxSurge (Kubernetes' default: 25%, rounded up).
func deploymentSurge(d *appsv1.Deployment, replicas int32) int32 {
	surge := intstr.FromString("25%")
	if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxSurge != nil {
		surge = *ru.MaxSurge
	}
	if d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType {
		return 0
	}
	if surge.Type == intstr.Int {
		return surge.IntVal
	}
	var pct float64
	fmt.Sscanf(surge.StrVal, "%f%%", &pct)
	return int32(math.Ceil(pct / 100 * float64(replicas)))
}

func replicasOf(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

// objects holds the decoded objects of one rendering, by kind and name.
type objects struct {
	workloads    []workload
	services     []*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	pdbs         []*policyv1.PodDisruptionBudget
	scaled       []*keda.ScaledObject
	triggerAuths map[string]*keda.TriggerAuthentication
}

func (s *objects) add(obj any) {
	if s.configMaps == nil {
		s.configMaps = map[string]*corev1.ConfigMap{}
		s.secrets = map[string]*corev1.Secret{}
		s.triggerAuths = map[string]*keda.TriggerAuthentication{}
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		replicas := replicasOf(o.Spec.Replicas)
		s.workloads = append(s.workloads, workload{"Deployment", o.Name, &o.Spec.Template, replicas, deploymentSurge(o, replicas), o.Annotations})
	case *appsv1.StatefulSet:
		s.workloads = append(s.workloads, workload{"StatefulSet", o.Name, &o.Spec.Template, replicasOf(o.Spec.Replicas), 0, o.Annotations})
	case *corev1.Service:
		s.services = append(s.services, o)
	case *corev1.ConfigMap:
		s.configMaps[o.Name] = o
	case *corev1.Secret:
		s.secrets[o.Name] = o
	case *policyv1.PodDisruptionBudget:
		s.pdbs = append(s.pdbs, o)
	case *keda.ScaledObject:
		s.scaled = append(s.scaled, o)
	case *keda.TriggerAuthentication:
		s.triggerAuths[o.Name] = o
	}
}

// decodeStrict decodes one rendered object into its API type, refusing unknown fields.
func decodeStrict(raw []byte) (any, error) {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, err
	}
	var obj any
	switch head.APIVersion + " " + head.Kind {
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "apps/v1 StatefulSet":
		obj = &appsv1.StatefulSet{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1 Secret":
		obj = &corev1.Secret{}
	case "v1 Namespace":
		obj = &corev1.Namespace{}
	case "v1 ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "policy/v1 PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "keda.sh/v1alpha1 ScaledObject":
		obj = &keda.ScaledObject{}
	case "keda.sh/v1alpha1 TriggerAuthentication":
		obj = &keda.TriggerAuthentication{}
	default:
		return nil, fmt.Errorf("no API type known for apiVersion %q kind %q (add it to deploy/validate)", head.APIVersion, head.Kind)
	}
	if err := decodeJSON(raw, obj); err != nil {
		return nil, fmt.Errorf("not a valid %s %s: %v", head.APIVersion, head.Kind, err)
	}
	return obj, nil
}
