/*
 * Glimpse viewer: a browser participant of a Glimpse room, served by the
 * glimpse-edge development server.
 *
 * It behaves like Glimpse's own browser client, so that the agent is tested
 * against what real browsers do (see /work/shared/glimpse-protocol.md):
 *   - log in over HTTP, authenticate and join the room over the WebSocket;
 *   - one RTCPeerConnection per other participant; members that get
 *     `user_joined` offer to the newcomer, the newcomer answers;
 *   - an offer for a peer that already has a connection is applied to it
 *     (renegotiation, ICE restart; in have-local-offer state Chrome rolls our
 *     own offer back implicitly, so glare ends with us answering);
 *   - candidates are trickled (never an end-of-candidates marker, unless
 *     ?eoc=1), remote ones are queued until the remote description is set;
 *   - connection state `disconnected`/`failed`: wait 2 s, close, build a NEW
 *     connection and send a new offer to the same peer;
 *   - `user_left`/`user_offline` close that peer's connection.
 * Receive-only by default; ?send=1 captures camera and microphone and sends
 * them to every peer, as a real participant does.
 *
 * URL parameters: user, password, room (all three: join at once), token
 * (instead of user/password), send=1, eoc=1, dialect=1 (send signals as
 * {"type": "offer"|"answer"|"ice-candidate"} like Glimpse's web client),
 * call=1 (also offer to every active member listed in room_joined, which
 * Glimpse's client does not do), rebuild=always|recheck|off,
 * ice=URL[,URL...] with iceuser/icepass.
 *
 * Tests drive the page through window.glimpseViewer (state(), stats(), ...).
 * No frameworks and no build step: this file is served as is.
 */
"use strict";

(() => {
  const STATS_INTERVAL_MS = 1000;
  const LOG_LIMIT = 50;
  const REBUILD_DELAY_MS = 2000;
  const WS_RETRY_MAX_MS = 5000;

  const params = new URLSearchParams(location.search);
  const flag = (name) => ["1", "true", "yes", "on"].includes((params.get(name) || "").toLowerCase());

  function iceServersFromParams() {
    const urls = (params.get("ice") || "").split(",").map((u) => u.trim()).filter(Boolean);
    return urls.map((url) => {
      const server = { urls: url };
      if (/^turns?:/.test(url)) {
        server.username = params.get("iceuser") || "";
        server.credential = params.get("icepass") || "";
      }
      return server;
    });
  }

  const options = {
    send: flag("send"),
    eoc: flag("eoc"),
    dialect: flag("dialect"),
    call: flag("call"),
    rebuild: ["always", "recheck", "off"].includes(params.get("rebuild"))
      ? params.get("rebuild") : "always",
    iceServers: iceServersFromParams(),
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"), who: $("who"), roomName: $("room-name"), leave: $("leave"),
    form: $("login"), user: $("user"), password: $("password"), room: $("room"), send: $("send"),
    error: $("error"), call: $("call"), members: $("members"), local: $("local"),
    localVideo: $("local-video"), tiles: $("tiles"), empty: $("empty"), log: $("log"),
    template: $("tile-template"),
  };

  const view = {
    status: "idle",     // idle logging-in connecting authenticating joining joined reconnecting left error
    ws: "closed",       // connecting open closed
    error: null,
    me: null,           // {id, username}
    room: null,         // {id, name}
    roomId: null,
    token: null,
    joinedAt: null,
    members: new Map(), // id -> {username, online}
    peers: new Map(),   // id -> Peer (see newPeer)
    log: [],
    local: null,        // {video: {width, height, label}, audio: {label}} when sending
  };
  const chains = new Map(); // peer id -> Promise: signaling work for one peer runs in order
  let ws = null;
  let wsRetries = 0;
  let leaving = false;
  let localStream = null;

  // -- events ------------------------------------------------------------------

  const ms = (t) => Math.round(t * 10) / 10;

  function record(event, fields = {}, level = "log") {
    const entry = { t: ms(performance.now()), event, ...fields };
    view.log.push(entry);
    if (view.log.length > LOG_LIMIT) view.log.shift();
    console[level]("[viewer]", event, JSON.stringify(fields));
    const li = document.createElement("li");
    const details = Object.entries(fields).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    li.textContent = `${(entry.t / 1000).toFixed(3)}s  ${event}  ${details.join(" ")}`;
    if (level !== "log") li.className = level;
    ui.log.prepend(li);
    while (ui.log.childElementCount > LOG_LIMIT) ui.log.lastElementChild.remove();
  }

  const short = (id) => (typeof id === "string" ? id.slice(-6) : String(id));

  function setStatus(status, error = null) {
    view.status = status;
    if (error !== null) view.error = error;
    const text = {
      idle: "not connected", "logging-in": "logging in…", connecting: "connecting…",
      authenticating: "authenticating…", joining: "joining…", joined: "in the room",
      reconnecting: "reconnecting…", left: "left the room", error: "error",
    }[status] || status;
    ui.status.textContent = text;
    ui.status.dataset.state = status;
    ui.leave.hidden = status !== "joined";
    if (error !== null) {
      ui.error.textContent = error;
      ui.error.hidden = false;
    }
  }

  // -- WebSocket -----------------------------------------------------------------

  function send(msg) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      record("send_dropped", { type: msg.type, reason: "socket not open" }, "warn");
      return false;
    }
    ws.send(JSON.stringify(msg));
    return true;
  }

  function sendSignal(peerId, kind, signal) {
    const msg = options.dialect
      ? { type: kind, roomId: view.roomId, peerId, signal }
      : { type: "webrtc_signal", signalType: kind, roomId: view.roomId, peerId, signal };
    if (send(msg) && kind !== "ice-candidate") record("signal_out", { peer: short(peerId), kind });
  }

  function connect() {
    const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
    view.ws = "connecting";
    const sock = new WebSocket(url);
    ws = sock;
    sock.onopen = () => {
      if (ws !== sock) return;
      view.ws = "open";
      wsRetries = 0;
      record("ws_open", { url });
      setStatus("authenticating");
      send({ type: "authenticate", token: view.token });
    };
    sock.onmessage = (ev) => {
      if (ws !== sock) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        record("bad_frame", { reason: "invalid JSON" }, "warn");
        return;
      }
      if (!msg || typeof msg !== "object" || typeof msg.type !== "string") {
        record("bad_frame", { reason: "no type" }, "warn");
        return;
      }
      try {
        onMessage(msg);
      } catch (err) {
        record("handler_error", { type: msg.type, error: String(err) }, "error");
      }
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      view.ws = "closed";
      record("ws_closed", { code: ev.code });
      if (leaving || view.status === "error") return;
      // Media flows peer to peer: keep the connections, get signaling back.
      const delay = Math.min(WS_RETRY_MAX_MS, 500 * 2 ** wsRetries++);
      setStatus("reconnecting");
      setTimeout(connect, delay);
    };
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "authenticated":
      case "authenticate_response":
        if (msg.success === false) {
          record("auth_error", { message: msg.message || "rejected" }, "error");
          setStatus("error", `Authentication failed: ${msg.message || "rejected"}`);
          return;
        }
        view.me = {
          id: msg.userId || (msg.user && msg.user.id) || (view.me && view.me.id),
          username: msg.username || (msg.user && msg.user.username) || (view.me && view.me.username),
        };
        ui.who.textContent = `as ${view.me.username}`;
        record("authenticated", { id: view.me.id, username: view.me.username });
        setStatus("joining");
        send({ type: "join_room", roomId: view.roomId });
        return;
      case "auth_error":
        record("auth_error", { message: msg.message }, "error");
        setStatus("error", `Authentication failed: ${msg.message}`);
        return;
      case "room_joined":
        if (msg.roomId !== view.roomId) return;
        onRoomJoined(msg);
        return;
      case "room_users":
        if (msg.roomId === view.roomId && Array.isArray(msg.users)) setMembers(msg.users);
        return;
      case "user_joined":
        if (typeof msg.userId !== "string" || isMe(msg.userId)) return;
        view.members.set(msg.userId, { username: msg.username, online: true });
        renderMembers();
        record("user_joined", { peer: short(msg.userId), username: msg.username });
        // Existing members call newcomers.
        offerTo(ensurePeer(msg.userId, msg.username), "user_joined");
        return;
      case "user_left":
      case "user_offline":
        if (typeof msg.userId !== "string" || isMe(msg.userId)) return;
        if (msg.type === "user_left") view.members.delete(msg.userId);
        else view.members.set(msg.userId, { username: msg.username, online: false });
        renderMembers();
        record(msg.type, { peer: short(msg.userId), username: msg.username });
        removePeer(msg.userId, msg.type);
        return;
      case "webrtc_signal":
        onSignal(msg.signalType, msg.peerId, msg.signal);
        return;
      case "offer":
      case "answer":
      case "ice-candidate":
        onSignal(msg.type, msg.peerId, msg.signal);
        return;
      case "room_left":
        setStatus("left");
        return;
      case "error":
        record("server_error", { message: msg.message }, "warn");
        if (view.status === "joining") setStatus("error", `Could not join: ${msg.message}`);
        return;
      case "new_message":
      case "typing_status":
      case "pong":
        return;
      default:
        record("unhandled", { type: msg.type.slice(0, 64) });
    }
  }

  const isMe = (id) => view.me !== null && id === view.me.id;

  function onRoomJoined(msg) {
    view.room = { id: msg.roomId, name: msg.name || "" };
    view.joinedAt = ms(performance.now());
    ui.roomName.textContent = `in “${view.room.name}”`;
    setMembers(Array.isArray(msg.users) ? msg.users : []);
    record("room_joined", { room: msg.roomId, users: (msg.users || []).length });
    setStatus("joined");
    ui.form.hidden = true;
    ui.call.hidden = false;
    // After a signaling reconnect: forget peers that left meanwhile, and
    // offline ones unless media still flows (they may just not be back yet).
    for (const [id, peer] of [...view.peers]) {
      const member = view.members.get(id);
      const connected = peer.pc !== null && peer.pc.connectionState === "connected";
      if (!member || (!member.online && !connected)) removePeer(id, "not_in_room");
    }
    if (options.call) {
      for (const [id, member] of view.members) {
        if (member.online && !view.peers.has(id)) offerTo(ensurePeer(id, member.username), "call");
      }
    }
  }

  function setMembers(users) {
    view.members.clear();
    for (const u of users) {
      if (u && typeof u.id === "string" && !isMe(u.id)) {
        view.members.set(u.id, { username: String(u.username), online: Boolean(u.isActive) });
        const peer = view.peers.get(u.id);
        if (peer) peer.username = String(u.username);
      }
    }
    renderMembers();
  }

  // -- peers -------------------------------------------------------------------

  function enqueue(peerId, what, fn) {
    const prev = chains.get(peerId) || Promise.resolve();
    const next = prev.then(fn).catch((err) => {
      record("signal_error", { peer: short(peerId), what, error: String(err) }, "error");
    });
    chains.set(peerId, next);
    return next;
  }

  function emptyMedia() {
    return {
      video: {
        framesDecoded: 0, frameWidth: 0, frameHeight: 0, fps: 0, bitrateKbps: 0,
        codec: null, fmtp: null, keyFramesDecoded: 0, framesDropped: 0, packetsLost: 0,
        freezeCount: 0, firstFrameAt: null, firstFrameSource: null,
      },
      audio: {
        packetsReceived: 0, totalSamplesReceived: 0, codec: null, fmtp: null, level: 0,
        bitrateKbps: 0, packetsLost: 0, concealedSamples: 0,
      },
      sent: null,
      rttMs: null,
      path: null,
    };
  }

  function ensurePeer(id, username) {
    let peer = view.peers.get(id);
    if (peer) {
      if (username) peer.username = username;
      return peer;
    }
    const member = view.members.get(id);
    const tile = ui.template.content.firstElementChild.cloneNode(true);
    const video = tile.querySelector("video");
    video.muted = true;
    peer = {
      id,
      username: username || (member && member.username) || `user ${short(id)}`,
      pc: null,
      connections: 0,
      createdAt: ms(performance.now()),
      connectedAt: null,
      rebuildTimer: null,
      pending: [],
      stream: null,
      tile,
      video,
      media: emptyMedia(),
      base: null,
    };
    tile.dataset.peer = id;
    const unmute = tile.querySelector(".unmute");
    unmute.addEventListener("click", () => {
      video.muted = !video.muted;
      unmute.textContent = video.muted ? "Unmute" : "Mute";
      if (!video.muted) video.play().catch(() => {});
    });
    view.peers.set(id, peer);
    ui.tiles.append(tile);
    renderTile(peer);
    renderEmpty();
    return peer;
  }

  function removePeer(id, reason) {
    const peer = view.peers.get(id);
    if (!peer) return;
    closePc(peer);
    peer.tile.remove();
    view.peers.delete(id);
    chains.delete(id);
    record("peer_removed", { peer: short(id), reason });
    renderEmpty();
  }

  function closePc(peer) {
    clearTimeout(peer.rebuildTimer);
    peer.rebuildTimer = null;
    const pc = peer.pc;
    if (!pc) return;
    peer.pc = null;
    pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = pc.oniceconnectionstatechange = null;
    pc.close();
  }

  /** A new RTCPeerConnection for the peer, replacing (and closing) any previous one. */
  function newPc(peer, reason) {
    closePc(peer);
    const pc = new RTCPeerConnection({ iceServers: options.iceServers });
    peer.pc = pc;
    peer.connections += 1;
    peer.connectedAt = null;
    peer.pending = [];
    peer.media = emptyMedia();
    peer.base = null;
    peer.stream = new MediaStream();
    peer.video.srcObject = peer.stream;
    watchFirstFrame(peer, pc);
    if (localStream) for (const track of localStream.getTracks()) pc.addTrack(track, localStream);

    pc.onicecandidate = (e) => {
      if (peer.pc !== pc) return;
      if (e.candidate && e.candidate.candidate) {
        sendSignal(peer.id, "ice-candidate", e.candidate.toJSON());
      } else if (options.eoc) {
        // Glimpse's web client never sends this; ?eoc=1 does, as the protocol allows.
        sendSignal(peer.id, "ice-candidate", { candidate: "" });
      }
    };
    pc.ontrack = (e) => {
      if (peer.pc !== pc) return;
      // One stream per peer, whatever msid the remote used, so audio and video play together.
      peer.stream.addTrack(e.track);
      record("track", { peer: short(peer.id), kind: e.track.kind, mid: e.transceiver && e.transceiver.mid });
      peer.video.play().catch(() => {});
      renderTile(peer);
    };
    pc.onconnectionstatechange = () => {
      if (peer.pc !== pc) return;
      const state = pc.connectionState;
      record("connection_state", { peer: short(peer.id), state });
      if (state === "connected" && peer.connectedAt === null) peer.connectedAt = ms(performance.now());
      if (state === "disconnected" || state === "failed") scheduleRebuild(peer, pc);
      renderTile(peer);
    };
    pc.oniceconnectionstatechange = () => {
      if (peer.pc === pc) renderTile(peer);
    };
    record("pc_created", { peer: short(peer.id), reason, n: peer.connections });
    renderTile(peer);
    return pc;
  }

  function scheduleRebuild(peer, pc) {
    if (options.rebuild === "off" || peer.rebuildTimer !== null) return;
    record("rebuild_scheduled", { peer: short(peer.id), state: pc.connectionState, delayMs: REBUILD_DELAY_MS });
    peer.rebuildTimer = setTimeout(() => {
      peer.rebuildTimer = null;
      if (view.peers.get(peer.id) !== peer || peer.pc !== pc) return;
      if (options.rebuild === "recheck" && !["disconnected", "failed"].includes(pc.connectionState)) {
        record("rebuild_skipped", { peer: short(peer.id), state: pc.connectionState });
        return;
      }
      offerTo(peer, "rebuild");
    }, REBUILD_DELAY_MS);
  }

  /** Build a new connection to the peer and send it an offer. */
  function offerTo(peer, reason) {
    return enqueue(peer.id, "offer", async () => {
      if (view.peers.get(peer.id) !== peer) return;
      const pc = newPc(peer, reason);
      if (!localStream) {
        pc.addTransceiver("video", { direction: "recvonly" });
        pc.addTransceiver("audio", { direction: "recvonly" });
      }
      await pc.setLocalDescription(await pc.createOffer());
      if (peer.pc !== pc) return;
      sendSignal(peer.id, "offer", { type: "offer", sdp: pc.localDescription.sdp });
    });
  }

  /** Offer again on the existing connection (what Glimpse does when tracks change). */
  function reoffer(peerId, iceRestart) {
    const peer = view.peers.get(peerId);
    if (!peer) return Promise.reject(new Error(`no peer ${peerId}`));
    return enqueue(peerId, iceRestart ? "ice-restart" : "renegotiate", async () => {
      const pc = peer.pc;
      if (!pc) throw new Error("no connection");
      await pc.setLocalDescription(await pc.createOffer({ iceRestart: Boolean(iceRestart) }));
      sendSignal(peerId, "offer", { type: "offer", sdp: pc.localDescription.sdp });
    });
  }

  const iceUfrag = (sdp) => ((sdp || "").match(/^a=ice-ufrag:(\S+)/m) || [])[1] || null;

  function onSignal(kind, peerId, signal) {
    if (typeof peerId !== "string" || !peerId || isMe(peerId)) {
      record("signal_ignored", { kind, reason: "bad peerId" }, "warn");
      return;
    }
    if (kind === "offer") {
      if (!signal || typeof signal.sdp !== "string") return record("signal_ignored", { kind, reason: "no sdp" }, "warn");
      record("signal_in", { peer: short(peerId), kind });
      enqueue(peerId, "answer", () => applyOffer(peerId, signal.sdp));
    } else if (kind === "answer") {
      if (!signal || typeof signal.sdp !== "string") return record("signal_ignored", { kind, reason: "no sdp" }, "warn");
      record("signal_in", { peer: short(peerId), kind });
      enqueue(peerId, "apply answer", () => applyAnswer(peerId, signal.sdp));
    } else if (kind === "ice-candidate") {
      if (!signal || typeof signal !== "object") return record("signal_ignored", { kind, reason: "no candidate" }, "warn");
      enqueue(peerId, "candidate", () => applyCandidate(peerId, signal));
    } else {
      record("signal_ignored", { kind: String(kind), reason: "unknown kind" }, "warn");
    }
  }

  async function applyOffer(peerId, sdp) {
    const peer = ensurePeer(peerId);
    let pc = peer.pc;
    if (!pc || pc.signalingState === "closed") {
      pc = newPc(peer, "offer");
    } else {
      const restart = pc.remoteDescription && iceUfrag(pc.remoteDescription.sdp) !== iceUfrag(sdp);
      record("offer_on_existing", {
        peer: short(peerId), signalingState: pc.signalingState, iceRestart: Boolean(restart),
        glare: pc.signalingState === "have-local-offer",
      });
    }
    // In have-local-offer, Chrome rolls our offer back implicitly (we are the polite side).
    await pc.setRemoteDescription({ type: "offer", sdp });
    await flushCandidates(peer, pc);
    await pc.setLocalDescription(await pc.createAnswer());
    if (peer.pc !== pc) return;
    sendSignal(peerId, "answer", { type: "answer", sdp: pc.localDescription.sdp });
  }

  async function applyAnswer(peerId, sdp) {
    const peer = view.peers.get(peerId);
    const pc = peer && peer.pc;
    if (!pc || pc.signalingState !== "have-local-offer") {
      record("answer_ignored", { peer: short(peerId), signalingState: pc ? pc.signalingState : "none" }, "warn");
      return;
    }
    await pc.setRemoteDescription({ type: "answer", sdp });
    await flushCandidates(peer, pc);
  }

  async function applyCandidate(peerId, candidate) {
    const peer = view.peers.get(peerId);
    if (!peer) {
      record("candidate_dropped", { peer: short(peerId), reason: "no connection" }, "warn");
      return;
    }
    const pc = peer.pc;
    if (!pc || !pc.remoteDescription) {
      peer.pending.push(candidate);
      return;
    }
    await addCandidate(peer, pc, candidate);
  }

  async function flushCandidates(peer, pc) {
    const queued = peer.pending.splice(0);
    for (const c of queued) await addCandidate(peer, pc, c);
  }

  async function addCandidate(peer, pc, candidate) {
    try {
      await pc.addIceCandidate(candidate);
    } catch (err) {
      // E.g. a candidate of an ICE generation that a restart replaced.
      record("candidate_rejected", { peer: short(peer.id), error: String(err) }, "warn");
    }
  }

  // -- first frame -------------------------------------------------------------

  const hasVideoFrameCallback = "requestVideoFrameCallback" in HTMLVideoElement.prototype;

  function watchFirstFrame(peer, pc) {
    if (!hasVideoFrameCallback) return;
    peer.video.requestVideoFrameCallback((_now, meta) => {
      if (peer.pc !== pc || peer.media.video.firstFrameAt !== null) return;
      peer.media.video.firstFrameAt = ms(performance.now());
      peer.media.video.firstFrameSource = "requestVideoFrameCallback";
      record("first_frame", { peer: short(peer.id), width: meta.width, height: meta.height });
      renderTile(peer);
    });
  }

  // -- statistics --------------------------------------------------------------

  const codecOf = (report, stat) => {
    const c = stat && stat.codecId ? report.get(stat.codecId) : null;
    return c ? { codec: c.mimeType || null, fmtp: c.sdpFmtpLine || null } : { codec: null, fmtp: null };
  };

  async function refreshPeer(peer) {
    const pc = peer.pc;
    if (!pc || pc.signalingState === "closed") return;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    if (peer.pc !== pc) return;
    const now = performance.now();
    let vin = null, ain = null, vout = null, aout = null, pair = null;
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        if (!vin || (s.framesDecoded || 0) > (vin.framesDecoded || 0)) vin = s;
      } else if (s.type === "inbound-rtp" && s.kind === "audio") {
        if (!ain || (s.packetsReceived || 0) > (ain.packetsReceived || 0)) ain = s;
      } else if (s.type === "outbound-rtp" && s.kind === "video") {
        if (!vout || (s.framesSent || 0) > (vout.framesSent || 0)) vout = s;
      } else if (s.type === "outbound-rtp" && s.kind === "audio") {
        if (!aout || (s.packetsSent || 0) > (aout.packetsSent || 0)) aout = s;
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = report.get(s.selectedCandidatePairId) || pair;
      }
    });
    if (!pair) {
      report.forEach((s) => {
        if (!pair && s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
    }

    const m = peer.media;
    // Rates over at least a second, however often stats() is called.
    const sample = {
      t: now, vbytes: vin ? vin.bytesReceived || 0 : 0, abytes: ain ? ain.bytesReceived || 0 : 0,
      frames: vin ? vin.framesDecoded || 0 : 0, sbytes: vout ? vout.bytesSent || 0 : 0,
    };
    const base = peer.base;
    let rates = null;
    if (!base) peer.base = sample;
    else if (now - base.t >= 1000) {
      const dt = (now - base.t) / 1000;
      rates = {
        vkbps: Math.round(((sample.vbytes - base.vbytes) * 8) / dt / 1000),
        akbps: Math.round(((sample.abytes - base.abytes) * 8) / dt / 1000),
        skbps: Math.round(((sample.sbytes - base.sbytes) * 8) / dt / 1000),
        fps: Math.round(((sample.frames - base.frames) / dt) * 10) / 10,
      };
      peer.base = sample;
    }

    if (vin) {
      const v = m.video;
      Object.assign(v, codecOf(report, vin), {
        framesDecoded: vin.framesDecoded || 0,
        frameWidth: vin.frameWidth || 0,
        frameHeight: vin.frameHeight || 0,
        keyFramesDecoded: vin.keyFramesDecoded || 0,
        framesDropped: vin.framesDropped || 0,
        packetsLost: vin.packetsLost || 0,
        freezeCount: vin.freezeCount || 0,
      });
      if (typeof vin.framesPerSecond === "number") v.fps = vin.framesPerSecond;
      else if (rates) v.fps = rates.fps;
      if (rates) v.bitrateKbps = rates.vkbps;
      if (v.firstFrameAt === null && v.framesDecoded > 0
          && (!hasVideoFrameCallback || document.visibilityState === "hidden")) {
        // Without frame callbacks (or in a hidden page, where they do not run):
        // the first refresh that sees a decoded frame.
        v.firstFrameAt = ms(now);
        v.firstFrameSource = "getStats";
      }
    }
    if (ain) {
      Object.assign(m.audio, codecOf(report, ain), {
        packetsReceived: ain.packetsReceived || 0,
        totalSamplesReceived: ain.totalSamplesReceived || 0,
        level: typeof ain.audioLevel === "number" ? ain.audioLevel : 0,
        packetsLost: ain.packetsLost || 0,
        concealedSamples: ain.concealedSamples || 0,
      });
      if (rates) m.audio.bitrateKbps = rates.akbps;
    }
    if (vout || aout) {
      m.sent = {
        video: vout ? {
          framesEncoded: vout.framesEncoded || 0, framesSent: vout.framesSent || 0,
          frameWidth: vout.frameWidth || 0, frameHeight: vout.frameHeight || 0,
          qualityLimitationReason: vout.qualityLimitationReason || null,
          bitrateKbps: rates ? rates.skbps : (m.sent && m.sent.video ? m.sent.video.bitrateKbps : 0),
          ...codecOf(report, vout),
        } : null,
        audio: aout ? { packetsSent: aout.packetsSent || 0, ...codecOf(report, aout) } : null,
      };
    }
    if (pair) {
      m.rttMs = typeof pair.currentRoundTripTime === "number"
        ? Math.round(pair.currentRoundTripTime * 10000) / 10 : m.rttMs;
      const local = report.get(pair.localCandidateId);
      const remote = report.get(pair.remoteCandidateId);
      const desc = (c) => (c ? `${c.candidateType} ${c.address || c.ip}:${c.port}/${c.protocol}` : "?");
      m.path = { local: desc(local), remote: desc(remote) };
    }
    renderTile(peer);
  }

  async function refreshStats() {
    await Promise.all([...view.peers.values()].map(refreshPeer));
  }

  // -- rendering ---------------------------------------------------------------

  function renderTile(peer) {
    const t = peer.tile;
    const pcState = peer.pc ? peer.pc.connectionState : "none";
    t.querySelector(".name").textContent = peer.username;
    const badge = t.querySelector(".conn");
    badge.textContent = peer.rebuildTimer !== null ? `${pcState} · rebuilding` : pcState;
    badge.dataset.state = pcState;
    const { video: v, audio: a, rttMs, path, sent } = peer.media;
    t.classList.toggle("has-video", v.framesDecoded > 0);
    const set = (k, text) => {
      t.querySelector(`[data-k="${k}"]`).textContent = text;
    };
    const dash = "–";
    set("resolution", v.frameWidth ? `${v.frameWidth}×${v.frameHeight}` : dash);
    set("fps", v.framesDecoded ? `${Number(v.fps).toFixed(1)} fps` : dash);
    set("vbitrate", v.framesDecoded ? `${v.bitrateKbps} kbit/s` : dash);
    set("frames", v.framesDecoded ? `${v.framesDecoded} (${v.keyFramesDecoded} key, ${v.framesDropped} dropped)` : dash);
    set("vcodec", v.codec ? `${v.codec}${v.fmtp ? ` ${v.fmtp}` : ""}` : dash);
    set("audio", a.packetsReceived ? `${a.packetsReceived} packets, ${a.bitrateKbps} kbit/s` : dash);
    set("acodec", a.codec ? `${a.codec}${a.fmtp ? ` ${a.fmtp}` : ""}` : dash);
    t.querySelector('[data-k="level"]').value = a.level;
    set("rtt", rttMs !== null ? `${rttMs} ms` : dash);
    let pathText = path ? `${path.local} ⇄ ${path.remote}` : dash;
    if (sent && sent.video) pathText += ` · sending ${sent.video.frameWidth}×${sent.video.frameHeight}`;
    set("path", pathText);
  }

  function renderMembers() {
    ui.members.replaceChildren(...[...view.members.entries()].map(([id, m]) => {
      const chip = document.createElement("span");
      chip.className = `member ${m.online ? "online" : "offline"}`;
      chip.textContent = m.username;
      chip.title = `${id} (${m.online ? "online" : "offline"})`;
      return chip;
    }));
  }

  function renderEmpty() {
    ui.empty.hidden = view.peers.size > 0;
  }

  // -- local media -------------------------------------------------------------

  async function startLocalMedia() {
    localStream = await navigator.mediaDevices.getUserMedia({
      video: { width: 1280, height: 720 },
      audio: { echoCancellation: true },
    });
    const [vt] = localStream.getVideoTracks();
    const [at] = localStream.getAudioTracks();
    const vs = vt ? vt.getSettings() : null;
    view.local = {
      video: vt ? { width: vs.width || 0, height: vs.height || 0, label: vt.label } : null,
      audio: at ? { label: at.label } : null,
    };
    ui.localVideo.srcObject = localStream;
    ui.local.hidden = false;
    record("local_media", { video: view.local.video, audio: Boolean(at) });
  }

  // -- joining and leaving -----------------------------------------------------

  async function start({ user, password, room, token }) {
    ui.error.hidden = true;
    view.error = null;
    view.roomId = room;
    leaving = false;
    try {
      if (!token) {
        setStatus("logging-in");
        const resp = await fetch("/api/auth/login", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ username: user, password }),
        });
        const body = await resp.json().catch(() => ({}));
        if (!resp.ok || !body.success) throw new Error(body.message || `HTTP ${resp.status}`);
        token = body.data.token;
        view.me = { id: body.data.user.id, username: body.data.user.username };
        record("logged_in", { id: view.me.id, username: view.me.username });
      }
      view.token = token;
      if (options.send && !localStream) await startLocalMedia();
    } catch (err) {
      record("start_failed", { error: String(err.message || err) }, "error");
      setStatus("error", `Could not join: ${err.message || err}`);
      return;
    }
    setStatus("connecting");
    connect();
  }

  /** Leave the room (other members get user_left) and close the socket. */
  function leave() {
    leaving = true;
    if (view.roomId) send({ type: "leave_room", roomId: view.roomId });
    for (const id of [...view.peers.keys()]) removePeer(id, "leave");
    // The server handles frames in order: leave_room before the close.
    if (ws) ws.close(1000, "left");
    view.room = null;
    ui.roomName.textContent = "";
    setStatus("left");
    ui.call.hidden = true;
    ui.form.hidden = false;
  }

  ui.leave.addEventListener("click", leave);
  ui.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    options.send = ui.send.checked;
    ui.form.querySelector("button").disabled = true;
    start({ user: ui.user.value.trim(), password: ui.password.value, room: ui.room.value.trim() })
      .finally(() => { ui.form.querySelector("button").disabled = false; });
  });

  // -- test hook ---------------------------------------------------------------

  function state() {
    const peers = {};
    for (const [id, p] of view.peers) {
      peers[id] = {
        username: p.username,
        connectionState: p.pc ? p.pc.connectionState : "none",
        iceConnectionState: p.pc ? p.pc.iceConnectionState : "none",
        signalingState: p.pc ? p.pc.signalingState : "none",
        connections: p.connections,
        createdAt: p.createdAt,
        connectedAt: p.connectedAt,
        rebuilding: p.rebuildTimer !== null,
        video: p.media.video,
        audio: p.media.audio,
        sent: p.media.sent,
        rttMs: p.media.rttMs,
        path: p.media.path,
      };
    }
    // A JSON round trip: callers get plain data, never live objects.
    return JSON.parse(JSON.stringify({
      status: view.status,
      ws: view.ws,
      error: view.error,
      me: view.me,
      room: view.room,
      joinedAt: view.joinedAt,
      options,
      local: view.local,
      members: Object.fromEntries(view.members),
      peers,
      log: view.log,
    }));
  }

  window.glimpseViewer = {
    state,
    async stats() {
      await refreshStats();
      return state();
    },
    leave,
    renegotiate: (peerId) => reoffer(peerId, false),
    restartIce: (peerId) => reoffer(peerId, true),
    rebuild: (peerId) => {
      const peer = view.peers.get(peerId);
      return peer ? offerTo(peer, "manual") : Promise.reject(new Error(`no peer ${peerId}`));
    },
  };

  setInterval(() => {
    refreshStats().catch((err) => record("stats_error", { error: String(err) }, "warn"));
  }, STATS_INTERVAL_MS);

  // -- start -------------------------------------------------------------------

  ui.user.value = params.get("user") || "";
  ui.password.value = params.get("password") || "";
  ui.room.value = params.get("room") || "";
  ui.send.checked = options.send;
  renderEmpty();
  const token = params.get("token");
  const room = params.get("room");
  if (room && (token || (params.get("user") && params.get("password")))) {
    start({ user: params.get("user"), password: params.get("password"), room, token });
  } else {
    ui.user.focus();
  }
})();
