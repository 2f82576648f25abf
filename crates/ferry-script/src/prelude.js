// Ferry script prelude: evaluated once per runtime with the Rust host functions as `host`.
// It builds the Mirth-style API (msg, channelMap, sourceMap, configMap, logger, router,
// $c, $s, $cfg) as frozen, non-writable globals so no message can change what the next
// one sees.
(function (host) {
    "use strict";
    const define = (name, value) => {
        Object.freeze(value);
        Object.defineProperty(globalThis, name, { value, writable: false, configurable: false, enumerable: false });
    };
    const text = (fn, what, v) => {
        if (typeof v !== "string") {
            throw new TypeError(fn + ": " + what + " must be a string, got " + (v === null ? "null" : typeof v));
        }
        return v;
    };

    // A view of one segment: `id`, `index` (1-based among segments with that id, as in
    // `OBX[2]`) and `position` (0-based in the message). Paths are relative: "5.1".
    class Segment {
        constructor(id, index, position) {
            this.id = id;
            this.index = index;
            this.position = position;
            Object.freeze(this);
        }
        path(rel) {
            return this.id + "[" + this.index + "]-" + text("segment.get", "field path", rel);
        }
        get(rel) { return host.get(this.path(rel)); }
        set(rel, value) { host.set(this.path(rel), value); }
        setNull(rel) { host.setNull(this.path(rel)); }
        delete(rel) { return host.delete(this.path(rel)); }
        exists(rel) { return host.exists(this.path(rel)); }
        toString() { return host.segmentText(this.id, this.index); }
    }
    Object.freeze(Segment.prototype);

    const segments = (id) => {
        if (id !== undefined) text("msg.segments", "segment id", id);
        const ids = host.segmentIds();
        const seen = {};
        const out = [];
        for (let position = 0; position < ids.length; position++) {
            const sid = ids[position];
            seen[sid] = (seen[sid] || 0) + 1;
            if (id === undefined || sid === id) out.push(new Segment(sid, seen[sid], position));
        }
        return out;
    };

    const removeSegment = (what, occurrence) => {
        if (what instanceof Segment) return host.removeSegment(what.id, what.index);
        text("msg.removeSegment", "segment id (or a segment view)", what);
        return host.removeSegment(what, occurrence === undefined ? 0 : occurrence);
    };

    const renameSegment = (from, to, occurrence) => {
        if (from instanceof Segment) return host.renameSegment(from.id, text("msg.renameSegment", "new id", to), from.index);
        text("msg.renameSegment", "segment id (or a segment view)", from);
        text("msg.renameSegment", "new id", to);
        return host.renameSegment(from, to, occurrence === undefined ? 0 : occurrence);
    };

    define("msg", {
        get: host.get,
        set: host.set,
        setNull: host.setNull,
        delete: host.delete,
        exists: host.exists,
        count: host.count,
        segments,
        addSegment: host.addSegment,
        removeSegment,
        renameSegment,
        toString: host.toString,
        toJSON: () => JSON.parse(host.toJSON()),
    });

    const decode = (j) => (j === undefined ? undefined : JSON.parse(j));
    const encode = (fn, v) => {
        const j = JSON.stringify(v);
        if (j === undefined) {
            throw new TypeError(fn + ": the value (" + typeof v + ") cannot be stored; use a string, number, boolean, null, array or plain object");
        }
        return j;
    };

    const channelMap = {
        get: (k) => decode(host.mapGet(0, String(k))),
        put: (k, v) => { host.mapPut(String(k), encode("channelMap.put", v)); },
        containsKey: (k) => host.mapGet(0, String(k)) !== undefined,
        remove: (k) => decode(host.mapRemove(String(k))),
        keys: () => host.mapKeys(0),
    };
    define("channelMap", channelMap);
    define("sourceMap", {
        get: (k) => decode(host.mapGet(1, String(k))),
        containsKey: (k) => host.mapGet(1, String(k)) !== undefined,
        keys: () => host.mapKeys(1),
        put: () => { throw new TypeError("sourceMap is read-only"); },
    });
    define("configMap", {
        get: (k) => host.configGet(String(k)),
        containsKey: (k) => host.configGet(String(k)) !== undefined,
        keys: () => host.configKeys(),
    });
    define("$c", function (k, v) {
        if (arguments.length >= 2) { channelMap.put(k, v); return v; }
        return channelMap.get(k);
    });
    define("$s", (k) => decode(host.mapGet(1, String(k))));
    define("$cfg", (k) => host.configGet(String(k)));

    const line = (args) => Array.prototype.map.call(args, (a) => (typeof a === "string" ? a : String(a))).join(" ");
    define("logger", {
        debug: function () { host.log(0, line(arguments)); },
        info: function () { host.log(1, line(arguments)); },
        warn: function () { host.log(2, line(arguments)); },
        error: function () { host.log(3, line(arguments)); },
    });
    define("router", {
        route: (channel, message) => {
            text("router.route", "channel", channel);
            if (message === undefined || message === null) {
                throw new TypeError("router.route: message must be a string (or msg), got " + (message === null ? "null" : "undefined"));
            }
            host.route(channel, typeof message === "string" ? message : String(message));
            return true;
        },
    });
});
