"""CatalogService servicer: the item catalog over gRPC, on the admin listener (writes change what is served).

Thin: decode, call ``recsys_rl.catalog.store.CatalogStore`` (validation, versions, CURRENT), encode. Mounted only on
the admin listener, behind ``ranker.admin_auth.AdminAuthInterceptor``: viewers may call GetItems and GetCatalog,
operators also UpsertItems and DeleteItems; the verified caller is recorded in the new version's manifest.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from ranker.admin_auth import verified_caller
from ranker.errors import map_errors
from recsys_rl.catalog.items import CatalogVersion
from recsys_rl.catalog.store import CatalogStore
from recsys_rl.catalog.v1 import catalog_service_pb2 as catalog_pb
from recsys_rl.catalog.v1 import catalog_service_pb2_grpc as catalog_grpc
from recsys_rl.errors import InvalidInput

CATALOG_SERVICE = catalog_pb.DESCRIPTOR.services_by_name["CatalogService"].full_name
MAX_IDS = 100_000  # per DeleteItems / GetItems call


def _check_ids(item_ids: list[str]) -> list[str]:
    if len(item_ids) > MAX_IDS:
        raise InvalidInput("item_ids", f"{len(item_ids)} ids is more than the limit of {MAX_IDS} per call")
    for i, item_id in enumerate(item_ids):
        if not item_id:
            raise InvalidInput(f"item_ids[{i}]", "must not be empty")
    return item_ids


def _described(version: CatalogVersion | None) -> tuple[str, int]:
    return ("", 0) if version is None else (version.version, len(version))


class CatalogServicer(catalog_grpc.CatalogServiceServicer):
    def __init__(self, store: CatalogStore) -> None:
        self.store = store

    @map_errors
    def UpsertItems(  # noqa: N802
        self, request_iterator: Iterator[catalog_pb.UpsertItemsRequest], context: grpc.ServicerContext
    ) -> catalog_pb.UpsertItemsResponse:
        actor = verified_caller()
        batches = [list(message.items) for message in request_iterator]
        version, written = self.store.upsert(batches, actor=actor)
        return catalog_pb.UpsertItemsResponse(version=version.version, upserted=written, count=len(version))

    @map_errors
    def DeleteItems(  # noqa: N802
        self, request: catalog_pb.DeleteItemsRequest, context: grpc.ServicerContext
    ) -> catalog_pb.DeleteItemsResponse:
        actor = verified_caller()
        version, deleted = self.store.delete(_check_ids(list(request.item_ids)), actor=actor)
        name, count = _described(version)
        return catalog_pb.DeleteItemsResponse(version=name, deleted=deleted, count=count)

    @map_errors
    def GetItems(  # noqa: N802
        self, request: catalog_pb.GetItemsRequest, context: grpc.ServicerContext
    ) -> catalog_pb.GetItemsResponse:
        self.store.refresh()  # a version another worker just recorded shows here, not a tick later
        version, items, missing = self.store.get(_check_ids(list(request.item_ids)))
        return catalog_pb.GetItemsResponse(version=version, items=items, missing_item_ids=missing)

    @map_errors
    def GetCatalog(  # noqa: N802
        self, request: catalog_pb.GetCatalogRequest, context: grpc.ServicerContext
    ) -> catalog_pb.GetCatalogResponse:
        self.store.refresh()
        current = self.store.current
        name, count = _described(current)
        reply = catalog_pb.GetCatalogResponse(version=name, count=count,
                                              dimension=0 if current is None else current.dimension)
        if current is not None:
            reply.created_at.FromNanoseconds(int(current.created_at * 1e9))
        return reply


def add_catalog_servicer(grpc_server: grpc.Server, store: CatalogStore) -> CatalogServicer:
    """Registers CatalogService (before the server starts); mount it only behind AdminAuthInterceptor."""
    servicer = CatalogServicer(store)
    catalog_grpc.add_CatalogServiceServicer_to_server(servicer, grpc_server)
    return servicer


__all__ = ["CATALOG_SERVICE", "CatalogServicer", "add_catalog_servicer"]
