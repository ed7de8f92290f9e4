"""The chart, rendered by Helm's engine, validates and has the promised shape."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import pytest
from conftest import (
    FIXTURES,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    Rendered,
    all_containers,
    container,
    env_of,
    load_values,
    pod_spec,
    render,
    validation_errors,
)

FULLNAME = f"{RELEASE}-etcd-elector"
POD_KINDS = {"Deployment", "StatefulSet", "CronJob", "Pod"}

VALUE_SETS: dict[str, dict[str, Any] | None] = {
    "defaults": None,
    "external-etcd": load_values(FIXTURES / "values" / "external-etcd.yaml"),
    "external-etcd-tls-auth": load_values(FIXTURES / "values" / "external-etcd-tls-auth.yaml"),
    "cronjob": load_values(FIXTURES / "values" / "cronjob.yaml"),
    "everything-on": load_values(FIXTURES / "values" / "everything-on.yaml"),
    "cronjob-external-tls-auth": {
        **load_values(FIXTURES / "values" / "external-etcd-tls-auth.yaml"),
        "cronjob": load_values(FIXTURES / "values" / "cronjob.yaml")["cronjob"],
    },
    "plain-sidecar": {"elector": {"nativeSidecar": False}},
    "native-sidecar": {"elector": {"nativeSidecar": True}},
    "pdb-and-options": {
        "podDisruptionBudget": {"enabled": True},
        "serviceAccount": {"create": False, "name": "existing"},
        "imagePullSecrets": [{"name": "regcred"}],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        "app": {"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "etcd": {"bundled": {"replicas": 5, "persistence": {"storageClass": "fast"}}},
    },
    "single-etcd-member": {"etcd": {"bundled": {"replicas": 1}}, "replicaCount": 2},
    "healthy-mode": {"elector": {"readiness": "healthy"}, "podDisruptionBudget": {"enabled": True}},
    "bundled-etcd-tls-monitoring": {
        "etcd": {"bundled": {"tls": {"enabled": True, "existingSecret": "etcd-server-tls"}}},
        "leaderFile": {"enabled": True},
        "metrics": {"service": {"enabled": True}},
        "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "strategy": {"type": "Recreate"},
    },
}


@pytest.fixture(scope="module")
def renders(chart: helm_python.Chart) -> dict[tuple[str, str], Rendered]:
    return {
        (name, version): render(chart, values, kube_version=version)
        for name, values in VALUE_SETS.items()
        for version in KUBE_VERSIONS
    }


def elector_of(out: Rendered) -> dict[str, Any]:
    return container(pod_spec(out.one("Deployment", FULLNAME)), "etcd-elector")


# --- every document is valid Kubernetes ------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_document_validates_strictly(
    renders: dict, value_set: str, kube_version: str
) -> None:
    out = renders[(value_set, kube_version)]
    assert out.docs, "nothing rendered"
    assert validation_errors(out.docs, kube_version) == []


# --- the sidecar -----------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_readiness_probe_asks_leader_every_second(renders: dict, kube_version: str) -> None:
    elector = elector_of(renders[("defaults", kube_version)])
    probe = elector["readinessProbe"]
    assert probe["httpGet"] == {"path": "/leader", "port": 4040}
    assert probe["periodSeconds"] == 1
    assert probe["successThreshold"] == 1
    assert elector["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 4040}
    assert elector["startupProbe"]["httpGet"] == {"path": "/healthz", "port": 4040}


def test_native_sidecar_from_kubernetes_1_29(renders: dict) -> None:
    spec = pod_spec(renders[("defaults", "1.31.0")].one("Deployment", FULLNAME))
    assert [c["name"] for c in spec["initContainers"]] == ["etcd-elector"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["app"]


def test_plain_sidecar_container_before_kubernetes_1_29(renders: dict) -> None:
    spec = pod_spec(renders[("defaults", "1.28.0")].one("Deployment", FULLNAME))
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["app", "etcd-elector"]
    assert "restartPolicy" not in spec["containers"][1]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_values_can_force_the_sidecar_kind(renders: dict, kube_version: str) -> None:
    native = pod_spec(renders[("native-sidecar", kube_version)].one("Deployment", FULLNAME))
    assert native["initContainers"][0]["name"] == "etcd-elector"
    assert native["initContainers"][0]["restartPolicy"] == "Always"
    plain = pod_spec(renders[("plain-sidecar", kube_version)].one("Deployment", FULLNAME))
    assert "initContainers" not in plain
    assert "etcd-elector" in [c["name"] for c in plain["containers"]]


def test_elector_configuration_is_passed_as_environment(renders: dict) -> None:
    env = env_of(elector_of(renders[("defaults", "1.31.0")]))
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["ELECTOR_KEY"] == f"/elector/{NAMESPACE}/{FULLNAME}"
    assert env["ELECTOR_TTL"] == "10"
    assert env["ELECTOR_LISTEN"] == "0.0.0.0:4040"
    assert env["ELECTOR_SHUTDOWN_TIMEOUT"] == "5"
    assert env["ELECTOR_RELEASE_DELAY"] == "0"
    assert env["ELECTOR_LOG_FORMAT"] == "json"
    assert env["ELECTOR_PROTOCOL"] == "lock"
    assert env["ELECTOR_ADMIN_LISTEN"] == "127.0.0.1:4041"
    assert "ELECTOR_ID" not in env  # the binary takes $POD_NAME
    custom = env_of(elector_of(renders[("external-etcd-tls-auth", "1.31.0")]))
    assert custom["ELECTOR_KEY"] == "/elector/prod/orders"
    assert custom["ELECTOR_TTL"] == "15"
    assert custom["ELECTOR_RELEASE_DELAY"] == "2"


def test_elector_image_defaults_to_the_chart_app_version(chart: helm_python.Chart, renders: dict) -> None:
    image = elector_of(renders[("defaults", "1.31.0")])["image"]
    assert image.endswith(f":{chart.metadata['appVersion']}")


# --- the Service reaches only the leader -------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_service_selects_only_the_application_pods(renders: dict, kube_version: str) -> None:
    out = renders[("defaults", kube_version)]
    service = out.one("Service", FULLNAME)
    selector = service["spec"]["selector"]
    deployment = out.one("Deployment", FULLNAME)
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    others = out.kinds("StatefulSet") + out.kinds("Pod")
    assert others
    for doc in others:
        labels = doc["metadata"]["labels"] if doc["kind"] == "Pod" else doc["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= labels.items(), f"Service would select {doc['kind']}"
    # The application's port only: the elector's is on no Service that
    # follows service.type (see test_services.py).
    assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("http", "http")]


def test_rollout_progresses_with_one_ready_pod(renders: dict) -> None:
    strategy = renders[("defaults", "1.31.0")].one("Deployment", FULLNAME)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == "100%"


def test_no_pod_disruption_budget_for_the_app_by_default(renders: dict) -> None:
    pdbs = renders[("defaults", "1.31.0")].kinds("PodDisruptionBudget")
    assert [p["metadata"]["name"] for p in pdbs] == [f"{FULLNAME}-etcd"]


def test_optional_pod_disruption_budget_never_blocks_a_drain(renders: dict) -> None:
    pdb = renders[("pdb-and-options", "1.31.0")].one("PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 0
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert "maxUnavailable" not in pdb["spec"]


# --- no Kubernetes API access, secure defaults -------------------------------


@pytest.mark.parametrize("value_set", ["defaults", "cronjob", "external-etcd-tls-auth"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_no_service_account_token_and_no_rbac(renders: dict, value_set: str, kube_version: str) -> None:
    out = renders[(value_set, kube_version)]
    for doc in out.docs:
        assert doc["kind"] not in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
        if doc["kind"] in POD_KINDS:
            assert pod_spec(doc)["automountServiceAccountToken"] is False, doc["kind"]
    (sa,) = out.kinds("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("value_set", ["defaults", "cronjob", "external-etcd-tls-auth", "plain-sidecar"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_pod_runs_locked_down(renders: dict, value_set: str, kube_version: str) -> None:
    out = renders[(value_set, kube_version)]
    pods = [doc for doc in out.docs if doc["kind"] in POD_KINDS]
    assert {d["kind"] for d in pods} >= {"Deployment", "Pod"}
    for doc in pods:
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["enableServiceLinks"] is False
        for c in all_containers(spec):
            where = f"{doc['kind']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "privileged" not in sc, where
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), where
            assert {"cpu", "memory"} <= c["resources"]["limits"].keys(), where


# --- etcd: bundled or external -----------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_bundled_etcd_when_no_endpoints_are_given(renders: dict, kube_version: str) -> None:
    out = renders[("defaults", kube_version)]
    sts = out.one("StatefulSet", f"{FULLNAME}-etcd")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == f"{FULLNAME}-etcd-headless"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    etcd = container(pod_spec(sts), "etcd")
    assert re.fullmatch(r"(quay\.io/coreos|registry\.k8s\.io)/etcd:v?3\.\d+\.\d+(-\d+)?", etcd["image"])
    assert {"name": "data", "mountPath": "/var/run/etcd"} in etcd["volumeMounts"]
    headless = out.one("Service", f"{FULLNAME}-etcd-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    members = [
        f"{FULLNAME}-etcd-{i}.{FULLNAME}-etcd-headless.{NAMESPACE}.svc.cluster.local" for i in range(3)
    ]
    etcd_env = env_of(etcd)
    assert etcd_env["ETCD_INITIAL_CLUSTER"] == ",".join(
        f"{FULLNAME}-etcd-{i}=http://{host}:2380" for i, host in enumerate(members)
    )
    elector_env = env_of(elector_of(out))
    assert elector_env["ELECTOR_ENDPOINTS"] == ",".join(f"http://{host}:2379" for host in members)


def test_bundled_etcd_member_count_follows_values(renders: dict) -> None:
    sts = renders[("pdb-and-options", "1.31.0")].one("StatefulSet")
    assert sts["spec"]["replicas"] == 5
    assert env_of(container(pod_spec(sts), "etcd"))["ETCD_INITIAL_CLUSTER"].count("=http://") == 5
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    single = renders[("single-etcd-member", "1.31.0")]
    assert single.one("StatefulSet")["spec"]["replicas"] == 1
    assert single.kinds("PodDisruptionBudget") == []


@pytest.mark.parametrize("value_set", ["external-etcd", "external-etcd-tls-auth"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_no_statefulset_when_endpoints_are_given(renders: dict, value_set: str, kube_version: str) -> None:
    out = renders[(value_set, kube_version)]
    assert out.kinds("StatefulSet") == []
    services = [s for s in out.kinds("Service") if "helm.sh/hook" not in s["metadata"].get("annotations", {})]
    assert [s["metadata"]["name"] for s in services] == [FULLNAME]
    assert out.kinds("PodDisruptionBudget") == []
    endpoints = VALUE_SETS[value_set]["etcd"]["endpoints"]
    assert env_of(elector_of(out))["ELECTOR_ENDPOINTS"] == ",".join(endpoints)


def assert_tls_and_auth_wired(spec: dict[str, Any], c: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    env = env_of(c)

    tls = volumes[mounts["/etc/etcd-elector/tls"]["name"]]["secret"]
    assert tls["secretName"] == "etcd-client-tls"
    assert {i["key"] for i in tls["items"]} == {"ca.crt", "tls.crt", "tls.key"}
    assert env["ELECTOR_ETCD_CACERT"] == "/etc/etcd-elector/tls/ca.crt"
    assert env["ELECTOR_ETCD_CERT"] == "/etc/etcd-elector/tls/tls.crt"
    assert env["ELECTOR_ETCD_KEY"] == "/etc/etcd-elector/tls/tls.key"

    auth = volumes[mounts["/etc/etcd-elector/auth"]["name"]]["secret"]
    assert auth["secretName"] == "etcd-elector-password"
    assert [i["key"] for i in auth["items"]] == ["password"]
    assert env["ELECTOR_ETCD_USER"] == "elector"
    assert env["ELECTOR_ETCD_PASSWORD_FILE"] == "/etc/etcd-elector/auth/password"
    # The password is a file, never an environment variable.
    assert "ELECTOR_ETCD_PASSWORD" not in env
    assert all(m["readOnly"] for m in mounts.values())


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_tls_and_auth_secrets_are_mounted_and_passed_to_the_elector(renders: dict, kube_version: str) -> None:
    out = renders[("external-etcd-tls-auth", kube_version)]
    spec = pod_spec(out.one("Deployment", FULLNAME))
    assert_tls_and_auth_wired(spec, container(spec, "etcd-elector"))
    # The application container gets neither Secret.
    assert "volumeMounts" not in container(spec, "app")


def test_tls_without_client_certificate(chart: helm_python.Chart) -> None:
    values = {"etcd": {"endpoints": ["https://etcd:2379"], "tls": {
        "enabled": True, "existingSecret": "etcd-ca", "certKey": "", "keyKey": ""}}}
    out = render(chart, values, kube_version="1.31.0")
    assert validation_errors(out.docs, "1.31.0") == []
    env = env_of(elector_of(out))
    assert env["ELECTOR_ETCD_CACERT"] == "/etc/etcd-elector/tls/ca.crt"
    assert "ELECTOR_ETCD_CERT" not in env and "ELECTOR_ETCD_KEY" not in env


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"etcd": {"tls": {"enabled": True, "existingSecret": "s"}}}, "set etcd.endpoints"),
        ({"etcd": {"endpoints": ["https://e:2379"], "tls": {"enabled": True, "existingSecret": "s", "keyKey": ""}}},
         "certKey and etcd.tls.keyKey go together"),
        ({"elector": {"releaseDelay": 5}}, "releaseDelay must be less than elector.shutdownTimeout"),
        ({"terminationGracePeriodSeconds": 2}, "terminationGracePeriodSeconds must be at least"),
        ({"cronjob": {"enabled": True, "command": ["x"], "ttl": 5, "gracePeriod": 5}}, "gracePeriod must be well below"),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(chart, values, kube_version="1.31.0")


# --- the CronJob under the lock ------------------------------------------------


def test_no_cronjob_by_default(renders: dict) -> None:
    assert renders[("defaults", "1.31.0")].kinds("CronJob") == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_cronjob_runs_its_command_under_the_lock_with_try(renders: dict, kube_version: str) -> None:
    cron = renders[("cronjob", kube_version)].one("CronJob", FULLNAME)
    assert cron["spec"]["schedule"] == "*/15 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    spec = pod_spec(cron)
    job = container(spec, "job")
    assert job["image"] == "registry.example.com/reports:2024.1"
    assert job["command"] == ["/usr/local/bin/etcd-elector"]
    assert job["args"] == ["run", "--try", "--", "/app/report", "--daily"]
    env = env_of(job)
    assert env["ELECTOR_KEY"] == "/elector/cron/nightly-report"
    assert env["ELECTOR_TTL"] == "20"
    assert env["ELECTOR_GRACE_PERIOD"] == "5"
    assert env["ELECTOR_HELD_EXIT_CODE"] == "0"
    assert env["REPORT_BUCKET"] == "reports"
    assert env["ELECTOR_ENDPOINTS"] == env_of(elector_of(renders[("cronjob", kube_version)]))["ELECTOR_ENDPOINTS"]
    # `run` serves no HTTP unless asked to.
    assert "ELECTOR_LISTEN" not in env
    assert spec["restartPolicy"] == "Never"


def test_cronjob_default_key_is_shared_across_namespaces(chart: helm_python.Chart) -> None:
    values = {"cronjob": {"enabled": True, "command": ["/bin/true"]}}
    keys = {
        env_of(container(pod_spec(render(chart, values, kube_version="1.31.0", namespace=ns).one("CronJob")), "job"))[
            "ELECTOR_KEY"
        ]
        for ns in ("team-a", "team-b")
    }
    assert keys == {f"/elector/cron/{FULLNAME}"}


def test_cronjob_reaches_etcd_with_tls_and_auth(renders: dict) -> None:
    spec = pod_spec(renders[("cronjob-external-tls-auth", "1.31.0")].one("CronJob"))
    assert_tls_and_auth_wired(spec, container(spec, "job"))


# --- helm test and NOTES -------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_helm_test_pod_checks_one_leader_behind_the_service(renders: dict, kube_version: str) -> None:
    out = renders[("defaults", kube_version)]
    (pod,) = out.kinds("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "before-hook-creation" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert pod["spec"]["restartPolicy"] == "Never"
    # It asks every application pod, Ready or not, through a test-only Service.
    service = out.one("Service", f"{FULLNAME}-test-leader")
    assert service["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert int(service["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == out.one("Deployment", FULLNAME)["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [4040]
    (check,) = pod["spec"]["containers"]
    assert env_of(check)["STATUS_URL"] == f"http://{FULLNAME}-test-leader:4040/status"
    script = check["command"][-1]
    assert '"is_leader"' in script and "two leaders named" in script
    assert any(n.endswith("templates/tests/test-leader.yaml") for n in out.files)


def test_embedding_mode_renders_no_workload(chart: helm_python.Chart) -> None:
    out = render(chart, {"deployment": {"enabled": False}}, kube_version="1.31.0")
    assert {d["kind"] for d in out.docs} == {
        "ServiceAccount", "StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    assert out.kinds("Pod") == []


def test_notes_say_how_to_see_who_leads(renders: dict) -> None:
    notes = renders[("defaults", "1.31.0")].notes
    assert f"helm test {RELEASE}" in notes
    assert f"deploy/{FULLNAME} 4040:4040" in notes
    assert "native sidecar" in notes
    assert "plain sidecar" in renders[("defaults", "1.28.0")].notes
