import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClusterStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLUSTER_STATUS_UNSPECIFIED: _ClassVar[ClusterStatus]
    CLUSTER_STATUS_PENDING: _ClassVar[ClusterStatus]
    CLUSTER_STATUS_RUNNING: _ClassVar[ClusterStatus]
    CLUSTER_STATUS_STOPPING: _ClassVar[ClusterStatus]
    CLUSTER_STATUS_STOPPED: _ClassVar[ClusterStatus]
    CLUSTER_STATUS_FAILED: _ClassVar[ClusterStatus]

class Target(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_UNSPECIFIED: _ClassVar[Target]
    TARGET_RUNNING: _ClassVar[Target]
    TARGET_STOPPED: _ClassVar[Target]
    TARGET_FAILED: _ClassVar[Target]

class Observed(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBSERVED_UNSPECIFIED: _ClassVar[Observed]
    OBSERVED_CREATED: _ClassVar[Observed]
    OBSERVED_STARTING: _ClassVar[Observed]
    OBSERVED_RUNNING: _ClassVar[Observed]
    OBSERVED_STOPPED: _ClassVar[Observed]
CLUSTER_STATUS_UNSPECIFIED: ClusterStatus
CLUSTER_STATUS_PENDING: ClusterStatus
CLUSTER_STATUS_RUNNING: ClusterStatus
CLUSTER_STATUS_STOPPING: ClusterStatus
CLUSTER_STATUS_STOPPED: ClusterStatus
CLUSTER_STATUS_FAILED: ClusterStatus
TARGET_UNSPECIFIED: Target
TARGET_RUNNING: Target
TARGET_STOPPED: Target
TARGET_FAILED: Target
OBSERVED_UNSPECIFIED: Observed
OBSERVED_CREATED: Observed
OBSERVED_STARTING: Observed
OBSERVED_RUNNING: Observed
OBSERVED_STOPPED: Observed

class Cluster(_message.Message):
    __slots__ = ("name", "status", "dashboard_route", "start_time", "stop_time", "options_json", "tls_cert", "tls_key", "owner", "backend", "reason", "requested_workers", "running_workers", "cores", "memory_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DASHBOARD_ROUTE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    STOP_TIME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_FIELD_NUMBER: _ClassVar[int]
    TLS_KEY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_WORKERS_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: ClusterStatus
    dashboard_route: str
    start_time: _timestamp_pb2.Timestamp
    stop_time: _timestamp_pb2.Timestamp
    options_json: str
    tls_cert: str
    tls_key: str
    owner: str
    backend: str
    reason: str
    requested_workers: int
    running_workers: int
    cores: float
    memory_bytes: int
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[ClusterStatus, str]] = ..., dashboard_route: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stop_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., options_json: _Optional[str] = ..., tls_cert: _Optional[str] = ..., tls_key: _Optional[str] = ..., owner: _Optional[str] = ..., backend: _Optional[str] = ..., reason: _Optional[str] = ..., requested_workers: _Optional[int] = ..., running_workers: _Optional[int] = ..., cores: _Optional[float] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class OptionField(_message.Message):
    __slots__ = ("field", "label", "default_json", "spec_json")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    field: str
    label: str
    default_json: str
    spec_json: str
    def __init__(self, field: _Optional[str] = ..., label: _Optional[str] = ..., default_json: _Optional[str] = ..., spec_json: _Optional[str] = ...) -> None: ...

class Worker(_message.Message):
    __slots__ = ("name", "status", "reason", "start_time", "stop_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    STOP_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: ClusterStatus
    reason: str
    start_time: _timestamp_pb2.Timestamp
    stop_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., status: _Optional[_Union[ClusterStatus, str]] = ..., reason: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stop_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProcessLog(_message.Message):
    __slots__ = ("process", "text")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    process: str
    text: str
    def __init__(self, process: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...
