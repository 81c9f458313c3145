"""Unit tests of the manifest builders: spec in, manifest out, no cluster."""

from __future__ import annotations

from typing import Any

import yaml

from mailpipe.config import PipelineSpec
from mailpipe_operator.builders import consumers, cronjobs, monitoring, rabbitmq, workers
from mailpipe_operator.builders.meta import Manifest
from operator_helpers import make_pipeline


def env_by_name(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container["env"]}


def assert_owned(manifest: Manifest) -> None:
    references = manifest["metadata"]["ownerReferences"]
    assert references[0]["uid"] == "uid-1234"
    assert references[0]["controller"] is True
    assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == "news"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mailpipe-operator"


class TestConfigMap:
    def test_config_map_round_trips_the_spec(self) -> None:
        pipeline = make_pipeline({"groups": [{"name": "alerts", "maxConsumers": 3}]})
        manifest = workers.config_map(pipeline)
        document = yaml.safe_load(manifest["data"]["config.yaml"])
        assert PipelineSpec.model_validate(document) == pipeline.spec
        assert document["groups"][0]["maxConsumers"] == 3
        assert_owned(manifest)


class TestWorkerEnvironment:
    def test_credentials_come_from_secrets(self) -> None:
        env = env_by_name({"env": workers.environment(make_pipeline())})
        for name in ("MAILPIPE_MYSQL_URL", "MAILPIPE_MONGODB_URL", "MAILPIPE_SMTP_URL", "MAILPIPE_RABBITMQ_URL"):
            assert "value" not in env[name]
            assert "secretKeyRef" in env[name]["valueFrom"]

    def test_managed_broker_uses_generated_secret(self) -> None:
        env = env_by_name({"env": workers.environment(make_pipeline())})
        assert env["MAILPIPE_RABBITMQ_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "news-rabbitmq-default-user",
            "key": "url",
        }
        assert env["MAILPIPE_RABBITMQ_API_URLS"]["valueFrom"]["secretKeyRef"]["key"] == "apiUrls"

    def test_external_broker_uses_referenced_secret(self) -> None:
        pipeline = make_pipeline({"secrets": {"rabbitmq": {"name": "broker", "key": "amqp"}}})
        env = env_by_name({"env": workers.environment(pipeline)})
        assert env["MAILPIPE_RABBITMQ_URL"]["valueFrom"]["secretKeyRef"] == {"name": "broker", "key": "amqp"}
        assert env["MAILPIPE_RABBITMQ_API_URLS"]["valueFrom"]["secretKeyRef"]["optional"] is True

    def test_pushgateway_only_when_set(self) -> None:
        assert "MAILPIPE_PUSHGATEWAY_URL" not in env_by_name({"env": workers.environment(make_pipeline())})
        pipeline = make_pipeline({"monitoring": {"pushgatewayUrl": "http://gateway:9091"}})
        env = env_by_name({"env": workers.environment(pipeline)})
        assert env["MAILPIPE_PUSHGATEWAY_URL"]["value"] == "http://gateway:9091"


class TestConsumerDeployment:
    def test_runs_consume_for_its_group(self) -> None:
        pipeline = make_pipeline({"groups": [{"name": "alerts"}], "monitoring": {"metricsPort": 9200}})
        manifest = consumers.consumer_deployment(pipeline, pipeline.spec.groups[0], replicas=3)
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        assert manifest["metadata"]["name"] == "news-consumer-alerts"
        assert manifest["spec"]["replicas"] == 3
        assert container["command"] == ["mailpipe", "consume", "alerts", "--config", "/etc/mailpipe/config.yaml"]
        assert container["ports"][0]["containerPort"] == 9200
        assert container["image"] == pipeline.spec.image
        assert_owned(manifest)

    def test_selector_matches_pod_labels(self) -> None:
        pipeline = make_pipeline()
        manifest = consumers.consumer_deployment(pipeline, pipeline.spec.groups[0], replicas=1)
        selector = manifest["spec"]["selector"]["matchLabels"]
        pod_labels = manifest["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        assert selector["mailpipe.io/group"] == pipeline.spec.groups[0].name

    def test_replicas_left_out_for_external_scaler(self) -> None:
        pipeline = make_pipeline()
        manifest = consumers.consumer_deployment(pipeline, pipeline.spec.groups[0], replicas=None)
        assert "replicas" not in manifest["spec"]

    def test_grace_period_covers_one_smtp_timeout(self) -> None:
        pipeline = make_pipeline({"smtp": {"timeoutSeconds": 45}})
        manifest = consumers.consumer_deployment(pipeline, pipeline.spec.groups[0], replicas=1)
        assert manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 75


class TestCronJobs:
    def test_one_cronjob_per_scheduled_role(self) -> None:
        pipeline = make_pipeline({"populate": {"schedule": "*/2 * * * *"}, "auditDequeued": {"schedule": "@hourly"}})
        by_name = {item["metadata"]["name"]: item for item in cronjobs.cronjobs(pipeline)}
        assert sorted(by_name) == ["news-audit-dequeued", "news-healthcheck", "news-populate", "news-publish"]
        assert by_name["news-populate"]["spec"]["schedule"] == "*/2 * * * *"
        assert by_name["news-audit-dequeued"]["spec"]["schedule"] == "@hourly"

    def test_runs_never_overlap(self) -> None:
        for manifest in cronjobs.cronjobs(make_pipeline()):
            assert manifest["spec"]["concurrencyPolicy"] == "Forbid"
            assert manifest["spec"]["successfulJobsHistoryLimit"] == cronjobs.HISTORY_LIMIT
            assert manifest["spec"]["failedJobsHistoryLimit"] == cronjobs.HISTORY_LIMIT
            assert_owned(manifest)

    def test_command_names_the_role(self) -> None:
        manifest = cronjobs.cronjob(make_pipeline(), cronjobs.ScheduledRole("audit-dequeued"))
        pod = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["containers"][0]["command"][:2] == ["mailpipe", "audit-dequeued"]
        assert pod["restartPolicy"] == "Never"


class TestRabbitMQ:
    def test_statefulset_takes_replicas_storage_and_image(self) -> None:
        pipeline = make_pipeline(
            {"rabbitmq": {"image": "rabbitmq:4.0", "storage": {"size": "5Gi", "storageClassName": "fast"}}}
        )
        manifest = rabbitmq.statefulset(pipeline, replicas=5)
        claim = manifest["spec"]["volumeClaimTemplates"][0]["spec"]
        assert manifest["spec"]["replicas"] == 5
        assert manifest["spec"]["serviceName"] == "news-rabbitmq-headless"
        assert manifest["spec"]["template"]["spec"]["containers"][0]["image"] == "rabbitmq:4.0"
        assert claim["resources"]["requests"]["storage"] == "5Gi"
        assert claim["storageClassName"] == "fast"
        assert_owned(manifest)

    def test_statefulset_keeps_given_claim_templates(self) -> None:
        kept = [{"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}]
        manifest = rabbitmq.statefulset(make_pipeline(), replicas=3, claim_templates=kept)
        assert manifest["spec"]["volumeClaimTemplates"] == kept

    def test_pre_stop_waits_for_quorum(self) -> None:
        container = rabbitmq.statefulset(make_pipeline(), replicas=3)["spec"]["template"]["spec"]["containers"][0]
        command = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        assert "await_online_quorum_plus_one" in command

    def test_pods_spread_across_nodes(self) -> None:
        spec = rabbitmq.statefulset(make_pipeline(), replicas=3)["spec"]["template"]["spec"]
        terms = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"

    def test_secrets_come_from_given_values(self) -> None:
        pipeline = make_pipeline({"rabbitmq": {"vhost": "mail"}})
        cookie = rabbitmq.erlang_cookie_secret(pipeline, cookie="c00kie")
        user = rabbitmq.default_user_secret(pipeline, username="admin", password="pw")
        assert cookie["stringData"] == {"cookie": "c00kie"}
        assert user["stringData"]["url"] == "amqp://admin:pw@news-rabbitmq.mail.svc:5672/mail"
        assert user["stringData"]["apiUrls"] == "http://admin:pw@news-rabbitmq.mail.svc:15672"

    def test_config_uses_kubernetes_peer_discovery(self) -> None:
        data = rabbitmq.config_map(make_pipeline())["data"]
        assert "rabbit_peer_discovery_k8s" in data["rabbitmq.conf"]
        assert "cluster_formation.k8s.service_name = news-rabbitmq-headless" in data["rabbitmq.conf"]
        assert "rabbitmq_prometheus" in data["enabled_plugins"]
        assert "rabbitmq_management" in data["enabled_plugins"]

    def test_headless_service_publishes_unready_pods(self) -> None:
        spec = rabbitmq.headless_service(make_pipeline())["spec"]
        assert spec["clusterIP"] == "None"
        assert spec["publishNotReadyAddresses"] is True

    def test_budget_allows_one_node_down(self) -> None:
        assert rabbitmq.pod_disruption_budget(make_pipeline())["spec"]["maxUnavailable"] == 1

    def test_peer_discovery_role_reads_endpoints_only(self) -> None:
        role = rabbitmq.peer_discovery_role(make_pipeline())
        assert role["rules"] == [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]}]


class TestMonitoring:
    def test_metrics_service_per_component(self) -> None:
        pipeline = make_pipeline({"monitoring": {"metricsPort": 9300}})
        services = {item["metadata"]["name"]: item for item in monitoring.metrics_services(pipeline)}
        assert services["news-consumer-metrics"]["spec"]["ports"][0]["port"] == 9300
        assert services["news-rabbitmq-metrics"]["spec"]["ports"][0]["port"] == rabbitmq.PROMETHEUS_PORT

    def test_service_monitor_selects_metrics_services(self) -> None:
        pipeline = make_pipeline()
        selector = monitoring.service_monitor(pipeline)["spec"]["selector"]["matchLabels"]
        for service in monitoring.metrics_services(pipeline):
            assert selector.items() <= service["metadata"]["labels"].items()

    def test_alerts_use_exported_metrics(self) -> None:
        rule = monitoring.prometheus_rule(make_pipeline())
        expressions = " ".join(item["expr"] for item in rule["spec"]["groups"][0]["rules"])
        for metric in ("mailpipe_healthcheck_status", "mailpipe_dequeued_total", "mailpipe_queue_messages"):
            assert metric in expressions
