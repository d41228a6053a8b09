// The control API (fastify). Every route has a JSON schema: unknown fields, wrong types and
// out-of-range values are refused with a 400 naming the field, before any handler runs (no type
// coercion, no silent removal of unknown fields). Mutating routes need the bearer token, checked
// before the body is even parsed. The OpenAPI document is generated from the same schemas.
import { createHash, timingSafeEqual } from "node:crypto";
import Fastify, { type FastifyReply, type FastifyRequest } from "fastify";
import swagger from "@fastify/swagger";
import type { FastifySchemaValidationError } from "fastify/types/schema.js";
import type { Logger } from "pino";
import { ControlError, STREAM_EVENTS, type ControlPlane } from "./control-plane.js";
import type { DataPlane } from "./data-plane.js";
import { EventHub, TooManyClientsError } from "./events.js";
import type { Metrics } from "./metrics.js";
import { DASHBOARD_HEADERS, loadDashboard } from "./dashboard.js";
import type { StateStore } from "./state.js";
import type { RedundancyKeeper } from "./redundancy.js";

export interface ApiOptions {
  control: ControlPlane;
  dataPlane: DataPlane;
  hub: EventHub;
  metrics: Metrics;
  store: StateStore;
  token: string;
  log: Logger;
  defaults: { drainTimeoutMs: number; switchoverWaitMs: number };
  /** Machine provisioning (libvirt), when configured. */
  machines?: RedundancyKeeper | undefined;
}

const ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$";
const IPV4_PATTERN = "^(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)(\\.(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)){3}$";
const MAX_DRAIN_MS = 3_600_000;

const replicaId = {
  type: "string",
  pattern: ID_PATTERN,
  description: "a replica id: 1 to 63 letters, digits, '.', '_', '-', starting with a letter or digit",
} as const;
const ipv4 = { type: "string", pattern: IPV4_PATTERN, description: "an IPv4 address" } as const;

const errorSchema = {
  type: "object",
  properties: {
    statusCode: { type: "integer" },
    error: { type: "string" },
    message: { type: "string" },
  },
  additionalProperties: true,
} as const;

const promotionSchema = {
  type: "object",
  properties: {
    from: { type: "string" },
    to: { type: "string" },
    replica: { type: "string" },
    spliced: { type: "integer", description: "open connections that continue on the new original" },
    reset: { type: "integer", description: "open connections reset (they could not continue)" },
    dropped: { type: "integer", description: "connections in their handshake or closing, forgotten" },
    waitedMs: { type: "integer" },
    persisted: { type: "boolean", description: "the state store acknowledged the change" },
  },
} as const;

const errors = (...codes: number[]) =>
  Object.fromEntries(codes.map((c) => [c, { ...errorSchema, description: `error ${c}` }]));

/** A validation error as an operator reads it: where, and what was expected. */
export function describeValidationError(errs: FastifySchemaValidationError[], dataVar: string): Error {
  const e = errs[0];
  if (!e) return new Error(`${dataVar}: invalid`);
  const path = e.instancePath.replace(/^\//, "").replace(/\//g, ".");
  const where = path ? `${dataVar}.${path}` : dataVar;
  const params = e.params;
  const described = (e as { parentSchema?: { description?: string } }).parentSchema?.description;
  let msg: string;
  switch (e.keyword) {
    case "additionalProperties":
      msg = `${where}: unknown field ${JSON.stringify(params.additionalProperty)}`;
      break;
    case "required":
      msg = `${where}: missing field ${JSON.stringify(params.missingProperty)}`;
      break;
    case "type":
      msg = `${where}: expected ${String(params.type)}${described ? ` (${described})` : ""}`;
      break;
    case "pattern":
    case "maxLength":
    case "minLength":
      msg = `${where}: expected ${described ?? e.message ?? "a valid value"}`;
      break;
    default:
      msg = `${where}: ${e.message ?? "invalid"}`;
  }
  return new Error(msg);
}

function sha256(s: string): Buffer {
  return createHash("sha256").update(s).digest();
}

export async function buildApi(o: ApiOptions) {
  const app = Fastify({
    loggerInstance: o.log,
    bodyLimit: 64 * 1024,
    forceCloseConnections: true,
    // Scrapes and status polls every few seconds would drown the log: see the onResponse hook.
    disableRequestLogging: true,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: true, verbose: true } },
    schemaErrorFormatter: describeValidationError,
  });
  // JSON only: anything else is a 415, not a string the schemas would then refuse.
  app.removeContentTypeParser("text/plain");
  await app.register(swagger, {
    openapi: {
      openapi: "3.0.3",
      info: {
        title: "tcp-replicator control API",
        description:
          "Roles, replica set, switchover and failover of a tcp-replicator appliance. Mutating routes need `Authorization: Bearer <token>`.",
        version: "1",
      },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      tags: [
        { name: "status", description: "what the appliance is doing" },
        { name: "replicas", description: "the replica set" },
        { name: "roles", description: "who is the original" },
      ],
    },
  });

  app.addHook("onResponse", (req, reply, done) => {
    const entry = {
      method: req.method,
      url: req.url,
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime),
    };
    if (req.method === "GET" && reply.statusCode < 400) req.log.debug(entry, "request");
    else req.log.info(entry, "request");
    done();
  });

  const expected = sha256(o.token);
  const requireToken = async (req: FastifyRequest, reply: FastifyReply) => {
    const h = req.headers.authorization;
    const given = typeof h === "string" && h.startsWith("Bearer ") ? h.slice(7) : undefined;
    // Hashes have one length: the comparison takes the same time whatever was sent.
    if (given === undefined || !timingSafeEqual(sha256(given), expected)) {
      req.log.warn({ route: req.url, given: given === undefined ? "none" : "wrong" }, "unauthorized");
      return reply
        .code(401)
        .header("www-authenticate", 'Bearer realm="tcp-replicator"')
        .send({ statusCode: 401, error: "Unauthorized", message: "a valid bearer token is required" });
    }
  };
  // POST routes whose fields are all optional may come without a body.
  const emptyBodyIsEmptyObject = (req: FastifyRequest, _reply: FastifyReply, done: () => void) => {
    if (req.body === undefined || req.body === null) req.body = {};
    done();
  };

  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown }, req, reply) => {
    if (err instanceof ControlError)
      return reply.code(err.statusCode).send({
        statusCode: err.statusCode,
        error: codeName(err.statusCode),
        message: err.message,
        ...err.details,
      });
    const status =
      err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (status >= 500) req.log.error({ err }, "request failed");
    return reply.code(status).send({
      statusCode: status,
      error: codeName(status),
      message: status >= 500 && err.statusCode === undefined ? "internal error" : err.message,
    });
  });

  app.get("/openapi.json", { schema: { hide: true } }, (_req, reply) => reply.send(app.swagger()));
  for (const f of await loadDashboard(STREAM_EVENTS))
    app.get(f.route, { schema: { hide: true } }, (_req, reply) =>
      reply.type(f.type).headers(DASHBOARD_HEADERS).send(f.body),
    );

  app.get(
    "/v1/status",
    {
      schema: {
        tags: ["status"],
        summary:
          "Service, roles, replicas with health, RTT per path, diverged/lagging connections, failover history",
        response: {
          200: {
            type: "object",
            properties: {
              service: { type: "object", additionalProperties: true },
              original: { type: "object", additionalProperties: true },
              replicas: { type: "array", items: { type: "object", additionalProperties: true } },
              connections: { type: "object", additionalProperties: true },
              rtt: { type: "object", nullable: true, additionalProperties: true },
              failures: { type: "object", additionalProperties: true },
              failovers: { type: "array", items: { type: "object", additionalProperties: true } },
              history: { type: "array", items: { type: "object", additionalProperties: true } },
              events: { type: "object", additionalProperties: true },
              state: { type: "object", additionalProperties: true },
            },
          },
        },
      },
    },
    (_req, reply) => reply.send(o.control.status()),
  );

  app.get(
    "/v1/machines",
    {
      schema: {
        tags: ["machines"],
        summary:
          "Machines provisioned through libvirt: state, host, role, the replica count kept, what is being provisioned",
        response: {
          200: {
            type: "object",
            properties: {
              target: { type: "integer" },
              machines: { type: "array", items: { type: "object", additionalProperties: true } },
              current: { type: "object", nullable: true, additionalProperties: true },
              counters: { type: "object", additionalProperties: true },
              lastError: { type: "string", nullable: true },
              hostsDown: { type: "array", items: { type: "object", additionalProperties: true } },
              watch: { type: "object", additionalProperties: true },
            },
          },
          404: errorSchema,
        },
      },
    },
    (_req, reply) => {
      if (!o.machines)
        return reply.code(404).send({
          statusCode: 404,
          error: "Not Found",
          message: 'machine provisioning is not configured (no "machines" section)',
        });
      return reply.send(o.machines.status());
    },
  );

  app.post<{ Body: { id: string; address: string } }>(
    "/v1/replicas",
    {
      onRequest: requireToken,
      schema: {
        tags: ["replicas"],
        summary: "Add a replica: it gets every connection opened from now on",
        security: [{ bearer: [] }],
        body: {
          type: "object",
          required: ["id", "address"],
          additionalProperties: false,
          properties: { id: replicaId, address: ipv4 },
        },
        response: {
          201: {
            type: "object",
            properties: {
              replica: {
                type: "object",
                properties: {
                  id: { type: "string" },
                  address: { type: "string" },
                  addedAt: { type: "string" },
                  state: { type: "string" },
                },
              },
              persisted: { type: "boolean" },
            },
          },
          ...errors(400, 401, 409),
        },
      },
    },
    async (req, reply) => {
      const r = await o.control.addReplica(req.body.id, req.body.address);
      return reply.code(201).send(r);
    },
  );

  app.delete<{ Params: { id: string }; Querystring: { timeoutMs?: string } }>(
    "/v1/replicas/:id",
    {
      onRequest: requireToken,
      schema: {
        tags: ["replicas"],
        summary:
          "Drain a replica (no new connections; open ones may finish, up to timeoutMs), then remove it",
        security: [{ bearer: [] }],
        params: {
          type: "object",
          properties: { id: replicaId },
          required: ["id"],
          additionalProperties: false,
        },
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            timeoutMs: {
              type: "string",
              pattern: "^[0-9]{1,7}$",
              description: `milliseconds, 0 to ${MAX_DRAIN_MS}`,
            },
          },
        },
        response: {
          200: {
            type: "object",
            properties: {
              id: { type: "string" },
              address: { type: "string" },
              drained: { type: "boolean", description: "its open shadows all finished before the timeout" },
              shadowsCut: { type: "integer" },
              waitedMs: { type: "integer" },
              persisted: { type: "boolean" },
            },
          },
          ...errors(400, 401, 404, 409),
        },
      },
    },
    async (req) => {
      const raw = req.query.timeoutMs;
      const timeoutMs = raw === undefined ? o.defaults.drainTimeoutMs : Number(raw);
      if (timeoutMs > MAX_DRAIN_MS)
        throw Object.assign(new Error(`querystring.timeoutMs: expected milliseconds, 0 to ${MAX_DRAIN_MS}`), {
          statusCode: 400,
        });
      return o.control.removeReplica(req.params.id, timeoutMs);
    },
  );

  app.post<{ Body: { replica?: string; waitMs?: number; force?: boolean } }>(
    "/v1/switchover",
    {
      onRequest: requireToken,
      preValidation: emptyBodyIsEmptyObject,
      schema: {
        tags: ["roles"],
        summary:
          "Planned promotion of a replica (the given one, or the best): it must answer a probe, and by default every open connection must be able to continue on it",
        security: [{ bearer: [] }],
        body: {
          type: "object",
          additionalProperties: false,
          properties: {
            replica: replicaId,
            waitMs: {
              type: "integer",
              minimum: 0,
              maximum: 60_000,
              description: "how long to wait for every open connection to be carriable (ms)",
            },
            force: {
              type: "boolean",
              description: "promote at the deadline anyway, resetting the connections that cannot continue",
            },
          },
        },
        response: { 200: promotionSchema, ...errors(400, 401, 404, 409) },
      },
    },
    async (req) =>
      o.control.switchover({
        replica: req.body.replica,
        waitMs: req.body.waitMs ?? o.defaults.switchoverWaitMs,
        force: req.body.force ?? false,
      }),
  );

  app.post<{ Body: { replica?: string; reason?: string } }>(
    "/v1/failover",
    {
      onRequest: requireToken,
      preValidation: emptyBodyIsEmptyObject,
      schema: {
        tags: ["roles"],
        summary: "External failure signal (the original is gone): promote the given or the best replica now",
        security: [{ bearer: [] }],
        body: {
          type: "object",
          additionalProperties: false,
          properties: {
            replica: replicaId,
            reason: { type: "string", minLength: 1, maxLength: 200, description: "1 to 200 characters" },
          },
        },
        response: { 200: promotionSchema, ...errors(400, 401, 404, 409) },
      },
    },
    async (req) => o.control.failover({ replica: req.body.replica, reason: req.body.reason }),
  );

  app.get<{ Headers: { "last-event-id"?: string } }>(
    "/v1/events",
    {
      schema: {
        tags: ["status"],
        summary:
          "Server-Sent Events: roles, history, promoted, original-failure, replica-added/-removed/-failure/-draining, switchover, diverged, lagging, no-replica-left",
        response: { 200: { description: "text/event-stream", type: "string" }, ...errors(503) },
      },
    },
    (req, reply) => {
      const last = Number(req.headers["last-event-id"]);
      const res = reply.raw;
      reply.hijack();
      res.writeHead(200, {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        connection: "keep-alive",
        "x-accel-buffering": "no",
      });
      // The current roles first, so a client needs no separate request to start drawing.
      res.write(`event: roles\ndata: ${JSON.stringify({ type: "roles", ...o.control.roles() })}\n\n`);
      try {
        o.hub.attach(res, Number.isInteger(last) && last >= 0 ? last : undefined);
      } catch (e) {
        if (!(e instanceof TooManyClientsError)) throw e;
        res.end(`event: error\ndata: ${JSON.stringify({ message: e.message })}\n\n`);
      }
    },
  );

  app.get(
    "/metrics",
    { schema: { tags: ["status"], summary: "Prometheus exposition" } },
    async (_req, reply) => {
      const stats = await o.dataPlane.stats();
      o.metrics.update(stats, {
        eventClients: o.hub.clientCount,
        eventClientsDropped: o.hub.dropped,
        stateStoreUp: o.store.isConnected,
        statePendingWrites: o.store.pendingWrites,
        replicasDraining: o.control.drainingCount,
      });
      return reply.type(o.metrics.contentType).send(await o.metrics.render());
    },
  );

  await app.ready();
  return app;
}

export type ApiServer = Awaited<ReturnType<typeof buildApi>>;

function codeName(status: number): string {
  return (
    {
      400: "Bad Request",
      401: "Unauthorized",
      404: "Not Found",
      409: "Conflict",
      413: "Payload Too Large",
      415: "Unsupported Media Type",
      503: "Service Unavailable",
    }[status] ?? (status >= 500 ? "Internal Server Error" : "Error")
  );
}
