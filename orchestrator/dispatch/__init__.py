"""The core service: one object every face (CLI, MCP, the gateway) calls.

The faces import only this package: the :class:`Service` and the models it speaks
(:mod:`.api`), its openers, and the machine operations a command runs without a service
(:mod:`.machine`, :mod:`.records`, :mod:`.probes`). What lies below (runs, runtime, state)
stays behind it.
"""

from orchestrator.dispatch.api import (
    AgentArgs,
    AgentDetail,
    AgentInfo,
    AgentList,
    AgentRemoved,
    BudgetLeft,
    ContainerInfo,
    Count,
    DialogueResult,
    DialogueTurn,
    DispatchArgs,
    DispatchService,
    FetchedResult,
    GroupDetail,
    GroupInfo,
    GroupList,
    GroupMemberInfo,
    JobList,
    JobStarted,
    JobStatus,
    ParallelResult,
    PoolInfo,
    SandboxStatus,
)
from orchestrator.dispatch.catalog import resolve_directory, with_agent, without_agent
from orchestrator.dispatch.junit import junit_xml, write_junit
from orchestrator.dispatch.machine import (
    ContainerRow,
    Listing,
    NetworkReady,
    Removal,
    TakenDown,
    agent_ref,
    agent_volume,
    build_engine,
    build_images,
    build_orchestrator,
    ensure_images,
    image_status,
    list_images,
    list_machine,
    provision_network,
    provision_proxy,
    take_down,
)
from orchestrator.dispatch.nested import AgentCalls, AgentMcpFactory, Lifespan
from orchestrator.dispatch.pipeline import (
    Event,
    PipelineResult,
    TaskOutcome,
    describe_event,
    run_pipeline,
)
from orchestrator.dispatch.probes import (
    Check,
    check_directories,
    check_engine,
    check_firewall,
    check_gvisor,
    check_images,
    check_isolation,
)
from orchestrator.dispatch.records import (
    EgressSuggestion,
    child_runs,
    find_run,
    follow_log,
    forget_agent,
    list_runs,
    pin_agent,
    run_stats,
    suggest_allow_hosts,
    target_run,
)
from orchestrator.dispatch.service import (
    GC_AFTER_S,
    Collected,
    Service,
    open_command_service,
    open_service,
)
from orchestrator.dispatch.taskfile import PipelineTask, TaskFile, load_tasks
from orchestrator.gateway.lifecycle import DAY_S

__all__ = [
    "DAY_S", "GC_AFTER_S", "AgentArgs", "AgentCalls", "AgentDetail", "AgentInfo", "AgentList",
    "AgentMcpFactory", "AgentRemoved",
    "BudgetLeft", "Check", "Collected", "ContainerInfo", "ContainerRow", "Count", "DialogueResult",
    "DialogueTurn", "DispatchArgs", "DispatchService", "EgressSuggestion", "Event",
    "FetchedResult", "GroupDetail",
    "GroupInfo", "GroupList", "GroupMemberInfo", "JobList", "JobStarted", "JobStatus",
    "Lifespan", "Listing",
    "NetworkReady", "ParallelResult", "PipelineResult", "PipelineTask", "PoolInfo", "Removal",
    "SandboxStatus", "Service", "TakenDown", "TaskFile", "TaskOutcome", "agent_ref", "agent_volume",
    "build_engine", "build_images", "build_orchestrator", "check_directories", "check_engine",
    "check_firewall", "check_gvisor", "check_images",
    "check_isolation", "child_runs", "describe_event", "ensure_images", "find_run", "follow_log",
    "forget_agent",
    "image_status", "junit_xml", "list_images", "list_machine", "list_runs", "load_tasks",
    "open_command_service", "open_service", "pin_agent", "provision_network", "provision_proxy",
    "resolve_directory",
    "run_pipeline", "run_stats", "suggest_allow_hosts", "take_down", "target_run", "with_agent",
    "without_agent", "write_junit",
]
