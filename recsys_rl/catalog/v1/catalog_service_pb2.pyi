import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from recsys_rl.ranking.v1 import ranking_service_pb2 as _ranking_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CatalogItem(_message.Message):
    __slots__ = ("item_id", "features", "embedding")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    features: _ranking_service_pb2.Features
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, item_id: _Optional[str] = ..., features: _Optional[_Union[_ranking_service_pb2.Features, _Mapping]] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogItem]
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogItem, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("version", "upserted", "count")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    version: str
    upserted: int
    count: int
    def __init__(self, version: _Optional[str] = ..., upserted: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("version", "deleted", "count")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    version: str
    deleted: int
    count: int
    def __init__(self, version: _Optional[str] = ..., deleted: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("version", "items", "missing_item_ids")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    version: str
    items: _containers.RepeatedCompositeFieldContainer[CatalogItem]
    missing_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[CatalogItem, _Mapping]]] = ..., missing_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCatalogResponse(_message.Message):
    __slots__ = ("version", "count", "dimension", "created_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    version: str
    count: int
    dimension: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[str] = ..., count: _Optional[int] = ..., dimension: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
