"""Port of samples-python message_passing/safe_message_handlers/ (activities.py, workflow.py,
worker.py, starter.py) in one module.

The workflow class (updates and a signal that wait for the cluster to start, an
``asyncio.Lock`` around the awaits that touch the nodes, an idempotency guard, health checks
on a timer, continue-as-new carrying the state, waiting for all handlers before it and
before returning), the activities and the logic are the sample's. The API changes: imports
from ``cairn``; ``typing.Dict`` / ``List`` / ``Optional`` / ``Set`` are spelled ``dict`` /
``list`` / ``X | None`` / ``set``; ``temporalio.common.RetryPolicy`` is ``cairn.RetryPolicy``;
``Client.connect`` takes a database URL (the sample's ``ClientConfig`` and host go);
``Worker`` takes the URL and ``queues`` instead of the client and ``task_queue``, and the
worker's ``main`` takes the URL and the event it waits on (the sample's is a module global
set by ctrl+c); ``client.start_workflow(..., task_queue=)`` is ``client.start(..., queue=)``
and its ``id_conflict_policy=TERMINATE_EXISTING`` goes (Cairn has no such policy; the id is
a new UUID each time, so there is nothing to terminate); the starter's ``main`` takes the
URL after the flag and closes its client. ``workflow.info().is_continue_as_new_suggested()``
and ``.get_current_history_length()`` keep their names; Cairn records fewer events than
Temporal (no workflow-task scheduled and completed, no activity-started events), so the
sample's 120-event test limit is reached later, often after the starter's 10 s sleep.
"""

# The sample's code is kept as written, so some of the linter's rewrites are not made:
# ruff: noqa: C403, C420, E501, RET505, SIM103, SIM105, UP041

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from cairn import ApplicationError, Client, RetryPolicy, Worker, WorkflowHandle, activity, workflow


# activities.py
@dataclass
class AssignNodesToJobInput:
    nodes: list[str]
    job_name: str


@dataclass
class ClusterState:
    node_ids: list[str]


@activity.defn
async def start_cluster() -> ClusterState:
    return ClusterState(node_ids=[f"node-{i}" for i in range(25)])


@activity.defn
async def assign_nodes_to_job(input: AssignNodesToJobInput) -> None:
    print(f"Assigning nodes {input.nodes} to job {input.job_name}")
    await asyncio.sleep(0.1)


@dataclass
class UnassignNodesForJobInput:
    nodes: list[str]
    job_name: str


@activity.defn
async def unassign_nodes_for_job(input: UnassignNodesForJobInput) -> None:
    print(f"Deallocating nodes {input.nodes} from job {input.job_name}")
    await asyncio.sleep(0.1)


@dataclass
class FindBadNodesInput:
    nodes_to_check: set[str]


@activity.defn
async def find_bad_nodes(input: FindBadNodesInput) -> set[str]:
    await asyncio.sleep(0.1)
    bad_nodes = set([id for id in input.nodes_to_check if hash(id) % 5 == 0])
    if bad_nodes:
        print(f"Found bad nodes: {bad_nodes}")
    else:
        print("No new bad nodes found.")
    return bad_nodes


# workflow.py
# In workflows that continue-as-new, it's convenient to store all your state in one serializable structure
# to make it easier to pass between runs
@dataclass
class ClusterManagerState:
    cluster_started: bool = False
    cluster_shutdown: bool = False
    nodes: dict[str, str | None] = dataclasses.field(default_factory=dict)
    jobs_assigned: set[str] = dataclasses.field(default_factory=set)


@dataclass
class ClusterManagerInput:
    state: ClusterManagerState | None = None
    test_continue_as_new: bool = False


@dataclass
class ClusterManagerResult:
    num_currently_assigned_nodes: int
    num_bad_nodes: int


# Be in the habit of storing message inputs and outputs in serializable structures.
# This makes it easier to add more over time in a backward-compatible way.
@dataclass
class ClusterManagerAssignNodesToJobInput:
    # If larger or smaller than previous amounts, will resize the job.
    total_num_nodes: int
    job_name: str


@dataclass
class ClusterManagerDeleteJobInput:
    job_name: str


@dataclass
class ClusterManagerAssignNodesToJobResult:
    nodes_assigned: set[str]


# ClusterManagerWorkflow keeps track of the assignments of a cluster of nodes.
# Via signals, the cluster can be started and shutdown.
# Via updates, clients can also assign jobs to nodes and delete jobs.
# These updates must run atomically.
@workflow.defn
class ClusterManagerWorkflow:
    @workflow.init
    def __init__(self, input: ClusterManagerInput) -> None:
        if input.state:
            self.state = input.state
        else:
            self.state = ClusterManagerState()

        if input.test_continue_as_new:
            self.max_history_length: int | None = 120
            self.sleep_interval_seconds = 1
        else:
            self.max_history_length = None
            self.sleep_interval_seconds = 600

        # Protects workflow state from interleaved access
        self.nodes_lock = asyncio.Lock()

    @workflow.update
    async def wait_until_cluster_started(self) -> ClusterManagerState:
        await workflow.wait_condition(lambda: self.state.cluster_started)
        return self.state

    @workflow.signal
    async def shutdown_cluster(self) -> None:
        await workflow.wait_condition(lambda: self.state.cluster_started)
        self.state.cluster_shutdown = True
        workflow.logger.info("Cluster shut down")

    # This is an update as opposed to a signal because the client may want to wait for nodes to be allocated
    # before sending work to those nodes.
    # Returns the list of node names that were allocated to the job.
    @workflow.update
    async def assign_nodes_to_job(
        self, input: ClusterManagerAssignNodesToJobInput
    ) -> ClusterManagerAssignNodesToJobResult:
        await workflow.wait_condition(lambda: self.state.cluster_started)
        if self.state.cluster_shutdown:
            # If you want the client to receive a failure, either add an update validator and throw the
            # exception from there, or raise an ApplicationError. Other exceptions in the main handler
            # will cause the workflow to keep retrying and get it stuck.
            raise ApplicationError(
                "Cannot assign nodes to a job: Cluster is already shut down"
            )

        async with self.nodes_lock:
            # Idempotency guard.
            if input.job_name in self.state.jobs_assigned:
                return ClusterManagerAssignNodesToJobResult(
                    self.get_assigned_nodes(job_name=input.job_name)
                )
            unassigned_nodes = self.get_unassigned_nodes()
            if len(unassigned_nodes) < input.total_num_nodes:
                # If you want the client to receive a failure, either add an update validator and throw the
                # exception from there, or raise an ApplicationError. Other exceptions in the main handler
                # will cause the workflow to keep retrying and get it stuck.
                raise ApplicationError(
                    f"Cannot assign {input.total_num_nodes} nodes; have only {len(unassigned_nodes)} available"
                )
            nodes_to_assign = unassigned_nodes[: input.total_num_nodes]
            # This await would be dangerous without nodes_lock because it yields control and allows interleaving
            # with delete_job and perform_health_checks, which both touch self.state.nodes.
            await self._assign_nodes_to_job(nodes_to_assign, input.job_name)
            return ClusterManagerAssignNodesToJobResult(
                nodes_assigned=self.get_assigned_nodes(job_name=input.job_name)
            )

    async def _assign_nodes_to_job(
        self, assigned_nodes: list[str], job_name: str
    ) -> None:
        await workflow.execute_activity(
            assign_nodes_to_job,
            AssignNodesToJobInput(nodes=assigned_nodes, job_name=job_name),
            start_to_close_timeout=timedelta(seconds=10),
        )
        for node in assigned_nodes:
            self.state.nodes[node] = job_name
        self.state.jobs_assigned.add(job_name)

    # Even though it returns nothing, this is an update because the client may want to track it, for example
    # to wait for nodes to be unassigned before reassigning them.
    @workflow.update
    async def delete_job(self, input: ClusterManagerDeleteJobInput) -> None:
        await workflow.wait_condition(lambda: self.state.cluster_started)
        if self.state.cluster_shutdown:
            # If you want the client to receive a failure, either add an update validator and throw the
            # exception from there, or raise an ApplicationError. Other exceptions in the main handler
            # will cause the workflow to keep retrying and get it stuck.
            raise ApplicationError("Cannot delete a job: Cluster is already shut down")

        async with self.nodes_lock:
            nodes_to_unassign = [
                k for k, v in self.state.nodes.items() if v == input.job_name
            ]
            # This await would be dangerous without nodes_lock because it yields control and allows interleaving
            # with assign_nodes_to_job and perform_health_checks, which all touch self.state.nodes.
            await self._unassign_nodes_for_job(nodes_to_unassign, input.job_name)

    async def _unassign_nodes_for_job(
        self, nodes_to_unassign: list[str], job_name: str
    ) -> None:
        await workflow.execute_activity(
            unassign_nodes_for_job,
            UnassignNodesForJobInput(nodes=nodes_to_unassign, job_name=job_name),
            start_to_close_timeout=timedelta(seconds=10),
        )
        for node in nodes_to_unassign:
            self.state.nodes[node] = None

    def get_unassigned_nodes(self) -> list[str]:
        return [k for k, v in self.state.nodes.items() if v is None]

    def get_bad_nodes(self) -> set[str]:
        return set([k for k, v in self.state.nodes.items() if v == "BAD!"])

    def get_assigned_nodes(self, *, job_name: str | None = None) -> set[str]:
        if job_name:
            return set([k for k, v in self.state.nodes.items() if v == job_name])
        else:
            return set(
                [
                    k
                    for k, v in self.state.nodes.items()
                    if v is not None and v != "BAD!"
                ]
            )

    async def perform_health_checks(self) -> None:
        async with self.nodes_lock:
            assigned_nodes = self.get_assigned_nodes()
            try:
                # This await would be dangerous without nodes_lock because it yields control and allows interleaving
                # with assign_nodes_to_job and delete_job, which both touch self.state.nodes.
                bad_nodes = await workflow.execute_activity(
                    find_bad_nodes,
                    FindBadNodesInput(nodes_to_check=assigned_nodes),
                    start_to_close_timeout=timedelta(seconds=10),
                    # This health check is optional, and our lock would block the whole workflow if we let it retry forever.
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
                for node in bad_nodes:
                    self.state.nodes[node] = "BAD!"
            except Exception as e:
                workflow.logger.warn(
                    f"Health check failed with error {type(e).__name__}:{e}"
                )

    @workflow.run
    async def run(self, input: ClusterManagerInput) -> ClusterManagerResult:
        cluster_state = await workflow.execute_activity(
            start_cluster, schedule_to_close_timeout=timedelta(seconds=10)
        )
        self.state.nodes = {k: None for k in cluster_state.node_ids}
        self.state.cluster_started = True
        workflow.logger.info("Cluster started")

        # Perform health checks at intervals.
        while True:
            await self.perform_health_checks()
            try:
                await workflow.wait_condition(
                    lambda: self.state.cluster_shutdown
                    or self.should_continue_as_new(),
                    timeout=timedelta(seconds=self.sleep_interval_seconds),
                )
            except asyncio.TimeoutError:
                pass
            if self.state.cluster_shutdown:
                break
            # The cluster manager is a long-running "entity" workflow so we need to periodically checkpoint its state and
            # continue-as-new.
            if self.should_continue_as_new():
                # We don't want to leave any job assignment or deletion handlers half-finished when we continue as new.
                await workflow.wait_condition(lambda: workflow.all_handlers_finished())
                workflow.logger.info("Continuing as new")
                workflow.continue_as_new(
                    ClusterManagerInput(
                        state=self.state,
                        test_continue_as_new=input.test_continue_as_new,
                    )
                )
        # Make sure we finish off handlers such as deleting jobs before we complete the workflow.
        await workflow.wait_condition(lambda: workflow.all_handlers_finished())
        return ClusterManagerResult(
            len(self.get_assigned_nodes()),
            len(self.get_bad_nodes()),
        )

    def should_continue_as_new(self) -> bool:
        if workflow.info().is_continue_as_new_suggested():
            return True
        # This is just for ease-of-testing.  In production, we trust temporal to tell us when to continue as new.
        if (
            self.max_history_length
            and workflow.info().get_current_history_length() > self.max_history_length
        ):
            return True
        return False


# worker.py
async def worker_main(url: str | None, interrupt_event: asyncio.Event) -> None:
    async with Worker(
        url,
        queues=["safe-message-handlers-task-queue"],
        workflows=[ClusterManagerWorkflow],
        activities=[
            assign_nodes_to_job,
            unassign_nodes_for_job,
            find_bad_nodes,
            start_cluster,
        ],
    ):
        logging.info("ClusterManagerWorkflow worker started, ctrl+c to exit")
        await interrupt_event.wait()
        logging.info("Shutting down")


# starter.py
async def do_cluster_lifecycle(wf: WorkflowHandle, delay_seconds: int | None = None) -> None:
    cluster_status = await wf.execute_update(
        ClusterManagerWorkflow.wait_until_cluster_started
    )
    print(f"Cluster started with {len(cluster_status.nodes)} nodes")

    print("Assigning jobs to nodes...")
    allocation_updates = []
    for i in range(6):
        allocation_updates.append(
            wf.execute_update(
                ClusterManagerWorkflow.assign_nodes_to_job,
                ClusterManagerAssignNodesToJobInput(
                    total_num_nodes=2, job_name=f"task-{i}"
                ),
            )
        )
    await asyncio.gather(*allocation_updates)

    print(f"Sleeping for {delay_seconds} second(s)")
    if delay_seconds:
        await asyncio.sleep(delay_seconds)

    print("Deleting jobs...")
    deletion_updates = []
    for i in range(6):
        deletion_updates.append(
            wf.execute_update(
                ClusterManagerWorkflow.delete_job,
                ClusterManagerDeleteJobInput(job_name=f"task-{i}"),
            )
        )
    await asyncio.gather(*deletion_updates)

    await wf.signal(ClusterManagerWorkflow.shutdown_cluster)


async def main(should_test_continue_as_new: bool, url: str | None = None) -> None:
    # Connect to Cairn
    client = await Client.connect(url)

    print("Starting cluster")
    cluster_manager_handle = await client.start(
        ClusterManagerWorkflow.run,
        ClusterManagerInput(test_continue_as_new=should_test_continue_as_new),
        id=f"ClusterManagerWorkflow-{uuid.uuid4()}",
        queue="safe-message-handlers-task-queue",
    )
    delay_seconds = 10 if should_test_continue_as_new else 1
    await do_cluster_lifecycle(cluster_manager_handle, delay_seconds=delay_seconds)
    result = await cluster_manager_handle.result()
    print(
        f"Cluster shut down successfully."
        f" It had {result.num_currently_assigned_nodes} nodes assigned at the end."
    )
    await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="Atomic message handlers")
    parser.add_argument(
        "--test-continue-as-new",
        help="Make the ClusterManagerWorkflow continue as new before shutting down",
        action="store_true",
        default=False,
    )
    args = parser.parse_args()
    asyncio.run(main(args.test_continue_as_new))
