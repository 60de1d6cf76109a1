//! One HTTP exchange through a filter, without I/O.
//!
//! The proxy and the test harness feed it what arrives (headers, body chunks) and carry out what
//! comes back as [`Out`]: forward these headers, send this data, answer with this response. It
//! implements the proxy-wasm stream rules once: a paused half buffers until resumed, body
//! callbacks that pause accumulate, and a local reply runs through the response callbacks.

use super::types::{Action, Direction, Effect, HeaderList, LocalReply, StreamInfo};
use super::vm::{Vm, VmError};

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Send the request upstream with these headers (`true`: no body follows).
    RequestHeaders(HeaderList, bool),
    /// Send request body data upstream (`true`: it is the last).
    RequestData(Vec<u8>, bool),
    /// The filter answered itself: do not send (or stop sending) the request upstream. The
    /// response follows as `ResponseHeaders`/`ResponseData`.
    Replied { details: String },
    /// Send the response downstream with these headers (`true`: no body follows).
    ResponseHeaders(HeaderList, bool),
    /// Send response body data downstream (`true`: it is the last).
    ResponseData(Vec<u8>, bool),
    /// Reset the stream without a response (the filter closed it).
    Reset,
    /// The host refuses to go on (e.g. a body too large to buffer): answer with this status.
    Fail(u16, &'static str),
}

/// Where one direction stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Headers not seen yet.
    #[default]
    Waiting,
    /// The headers callback paused; body data waits in `held`.
    HeadersPaused,
    /// Headers went on; body data flows (or accumulates while a body callback pauses).
    Streaming,
    /// The last byte went on.
    Done,
}

#[derive(Debug, Default)]
struct Half {
    stage: Stage,
    /// A body callback paused: data accumulates in the filter's body buffer.
    body_paused: bool,
    /// Data that arrived while the headers were paused.
    held: Vec<u8>,
    /// The end of the stream has arrived from the peer.
    ended: bool,
}

/// Collected results of one step: outputs for this exchange, effects for others.
#[derive(Debug, Default)]
pub struct Step {
    pub out: Vec<Out>,
    /// Effects that belong to someone else (HTTP calls, timers, other streams).
    pub others: Vec<Effect>,
    /// When the exchange finishes: what the filter set under the `access_log.` properties, for
    /// the host's access log (a filter's way to annotate a request's log line).
    pub annotations: Vec<(String, String)>,
}

/// One request/response through one VM.
#[derive(Debug)]
pub struct Exchange {
    context: u32,
    request: Half,
    response: Half,
    replied: bool,
    max_buffer: usize,
}

impl Exchange {
    /// Opens a stream context in `vm`. `max_buffer` bounds what the host keeps for a paused filter.
    pub fn open(vm: &mut Vm, info: StreamInfo, max_buffer: usize) -> Result<(Exchange, Step), VmError> {
        let context = vm.create_stream(info)?;
        let mut exchange =
            Exchange { context, request: Half::default(), response: Half::default(), replied: false, max_buffer };
        let mut step = Step::default();
        exchange.settle(vm, &mut step)?;
        Ok((exchange, step))
    }

    pub fn context(&self) -> u32 {
        self.context
    }

    /// True once the filter answered this exchange itself.
    pub fn replied(&self) -> bool {
        self.replied
    }

    pub fn request_headers(&mut self, vm: &mut Vm, headers: HeaderList, end: bool) -> Result<Step, VmError> {
        let mut step = Step::default();
        vm.stream_mut(self.context)?.request_headers = headers;
        self.request.ended = end;
        self.headers(vm, Direction::Request, &mut step)?;
        Ok(step)
    }

    /// Whether the request body should be read on: not while the filter holds the request
    /// headers and the host already holds `watermark` bytes of body for it. The client is then
    /// left waiting (TCP back-pressure, as Envoy's watermarks do) instead of being refused.
    pub fn takes_request_data(&self, watermark: usize) -> bool {
        !matches!(self.request.stage, Stage::Waiting | Stage::HeadersPaused) || self.request.held.len() < watermark
    }

    pub fn request_data(&mut self, vm: &mut Vm, data: &[u8], end: bool) -> Result<Step, VmError> {
        let mut step = Step::default();
        vm.stream_mut(self.context)?.request_body_received += data.len() as u64;
        self.data(vm, Direction::Request, data, end, &mut step)?;
        Ok(step)
    }

    pub fn response_headers(&mut self, vm: &mut Vm, headers: HeaderList, end: bool) -> Result<Step, VmError> {
        let mut step = Step::default();
        if self.replied {
            // The upstream lost the race against a local reply: ignore it.
            return Ok(step);
        }
        let stream = vm.stream_mut(self.context)?;
        stream.response_headers = headers;
        stream.response_code_details = Some("via_upstream".into());
        self.response.ended = end;
        self.headers(vm, Direction::Response, &mut step)?;
        Ok(step)
    }

    pub fn response_data(&mut self, vm: &mut Vm, data: &[u8], end: bool) -> Result<Step, VmError> {
        let mut step = Step::default();
        if !self.replied {
            self.data(vm, Direction::Response, data, end, &mut step)?;
        }
        Ok(step)
    }

    /// Names the cluster the host routes this stream to (`xds.cluster_name`), or none: the route
    /// for the request as it arrived before its headers callback, then for the request as the
    /// filter left it.
    pub fn route_to(&self, vm: &mut Vm, cluster: Option<&str>) -> Result<(), VmError> {
        vm.stream_mut(self.context)?.cluster = cluster.map(str::to_string);
        Ok(())
    }

    /// Applies an effect for this exchange that arrived later (e.g. from an HTTP call answer).
    pub fn apply(&mut self, vm: &mut Vm, effect: Effect) -> Result<Step, VmError> {
        let mut step = Step::default();
        self.apply_one(vm, effect, &mut step)?;
        self.settle(vm, &mut step)?;
        Ok(step)
    }

    /// Runs `on_log`, `on_done` and `on_delete`.
    pub fn finish(self, vm: &mut Vm) -> Result<Step, VmError> {
        // Read the annotations before on_log: a filter may set them there, and they are gone
        // with the stream afterwards. Those set in on_log itself are therefore not seen.
        let annotations = vm.stream(self.context).map(|s| s.properties_under("access_log.")).unwrap_or_default();
        vm.finish_stream(self.context)?;
        Ok(Step { others: vm.take_effects(), annotations, ..Step::default() })
    }

    fn half(&mut self, direction: Direction) -> &mut Half {
        match direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }

    fn headers(&mut self, vm: &mut Vm, direction: Direction, step: &mut Step) -> Result<(), VmError> {
        let end = self.half(direction).ended;
        let action = match direction {
            Direction::Request => vm.on_request_headers(self.context, end)?,
            Direction::Response => vm.on_response_headers(self.context, end)?,
        };
        match self.unless_replying(vm, action) {
            Action::Continue => self.release_headers(vm, direction, step)?,
            Action::Pause => self.half(direction).stage = Stage::HeadersPaused,
        }
        self.settle(vm, step)
    }

    /// Headers go on; then whatever body was held back is delivered to the body callback.
    fn release_headers(&mut self, vm: &mut Vm, direction: Direction, step: &mut Step) -> Result<(), VmError> {
        let stream = vm.stream_mut(self.context)?;
        let headers = match direction {
            Direction::Request => stream.request_headers.clone(),
            Direction::Response => stream.response_headers.clone(),
        };
        let half = self.half(direction);
        let held = std::mem::take(&mut half.held);
        let headers_only = half.ended && held.is_empty();
        half.stage = if headers_only { Stage::Done } else { Stage::Streaming };
        step.out.push(match direction {
            Direction::Request => Out::RequestHeaders(headers, headers_only),
            Direction::Response => Out::ResponseHeaders(headers, headers_only),
        });
        if headers_only {
            return Ok(());
        }
        if !held.is_empty() || half.ended {
            let end = half.ended;
            self.body_callback(vm, direction, held, end, step)?;
        }
        Ok(())
    }

    fn data(
        &mut self,
        vm: &mut Vm,
        direction: Direction,
        data: &[u8],
        end: bool,
        step: &mut Step,
    ) -> Result<(), VmError> {
        let max_buffer = self.max_buffer;
        let half = self.half(direction);
        half.ended |= end;
        match half.stage {
            Stage::Waiting | Stage::HeadersPaused => {
                half.held.extend_from_slice(data);
                if half.held.len() > max_buffer {
                    step.out.push(Self::too_large(direction));
                }
                Ok(())
            }
            Stage::Streaming => {
                self.body_callback(vm, direction, data.to_vec(), end, step)?;
                self.settle(vm, step)
            }
            Stage::Done => Ok(()),
        }
    }

    fn too_large(direction: Direction) -> Out {
        match direction {
            Direction::Request => Out::Fail(413, "request body too large for the filter to buffer"),
            Direction::Response => Out::Fail(502, "response body too large for the filter to buffer"),
        }
    }

    /// Appends `data` to the filter's body buffer and runs the body callback over it.
    fn body_callback(
        &mut self,
        vm: &mut Vm,
        direction: Direction,
        data: Vec<u8>,
        end: bool,
        step: &mut Step,
    ) -> Result<(), VmError> {
        let stream = vm.stream_mut(self.context)?;
        let body = match direction {
            Direction::Request => &mut stream.request_body,
            Direction::Response => &mut stream.response_body,
        };
        body.extend_from_slice(&data);
        if body.len() > self.max_buffer {
            step.out.push(Self::too_large(direction));
            return Ok(());
        }
        let action = match direction {
            Direction::Request => vm.on_request_body(self.context, end)?,
            Direction::Response => vm.on_response_body(self.context, end)?,
        };
        match self.unless_replying(vm, action) {
            Action::Continue => self.flush_body(vm, direction, step)?,
            Action::Pause => self.half(direction).body_paused = true,
        }
        Ok(())
    }

    /// A callback that asked for a local reply stops the stream whatever it returned: in Envoy a
    /// local reply ends the filter chain, so a request answered locally never goes upstream. (A
    /// second reply, asked for while the first runs through the response callbacks, is ignored.)
    fn unless_replying(&self, vm: &Vm, action: Action) -> Action {
        if !self.replied && vm.local_reply_pending(self.context) { Action::Pause } else { action }
    }

    /// Sends what the filter's body buffer holds (as the filter left it) on its way.
    fn flush_body(&mut self, vm: &mut Vm, direction: Direction, step: &mut Step) -> Result<(), VmError> {
        let stream = vm.stream_mut(self.context)?;
        let body = std::mem::take(match direction {
            Direction::Request => &mut stream.request_body,
            Direction::Response => &mut stream.response_body,
        });
        let half = self.half(direction);
        half.body_paused = false;
        let end = half.ended;
        if end {
            half.stage = Stage::Done;
        }
        if !body.is_empty() || end {
            step.out.push(match direction {
                Direction::Request => Out::RequestData(body, end),
                Direction::Response => Out::ResponseData(body, end),
            });
        }
        Ok(())
    }

    /// Takes the effects of the last call: this exchange's are applied now (the call has
    /// returned, so this is where re-entrant requests take effect), the rest go to the driver.
    fn settle(&mut self, vm: &mut Vm, step: &mut Step) -> Result<(), VmError> {
        loop {
            let effects = vm.take_effects();
            if effects.is_empty() {
                return Ok(());
            }
            for effect in effects {
                self.apply_one(vm, effect, step)?;
            }
        }
    }

    fn apply_one(&mut self, vm: &mut Vm, effect: Effect, step: &mut Step) -> Result<(), VmError> {
        match effect {
            Effect::Continue { context, direction } if context == self.context => {
                let half = self.half(direction);
                if half.stage == Stage::HeadersPaused {
                    self.release_headers(vm, direction, step)?;
                } else if half.body_paused {
                    self.flush_body(vm, direction, step)?;
                }
                // A continue for a half that is not paused changes nothing, as in Envoy.
            }
            Effect::LocalReply { context, reply } if context == self.context => {
                if !self.replied {
                    self.reply(vm, reply, step)?;
                }
            }
            Effect::Close { context, .. } if context == self.context => step.out.push(Out::Reset),
            other => step.others.push(other),
        }
        Ok(())
    }

    /// A local reply replaces whatever the upstream would have said. One asked for on the request
    /// path still passes through this filter's response callbacks; one asked for on the response
    /// path (the upstream's headers are held by the filter) goes out as it is, as in Envoy:
    /// running the callback that asked for it again would only ask again.
    fn reply(&mut self, vm: &mut Vm, reply: LocalReply, step: &mut Step) -> Result<(), VmError> {
        if matches!(self.response.stage, Stage::Streaming | Stage::Done) {
            // The response is already on its way downstream: too late to replace it.
            step.out.push(Out::Reset);
            return Ok(());
        }
        let from_response_path = self.response.stage == Stage::HeadersPaused;
        self.replied = true;
        self.request.stage = Stage::Done;
        let details = reply.details;
        step.out.push(Out::Replied { details: details.clone() });
        let mut headers = HeaderList::new();
        headers.add(":status", reply.status.to_string().as_bytes());
        for (name, value) in reply.headers.0 {
            if !name.starts_with(':') {
                headers.add(&name, &value);
            }
        }
        if !reply.body.is_empty() {
            headers.set("content-length", reply.body.len().to_string().as_bytes());
            // Envoy labels a local reply's body as text unless the filter said otherwise.
            if headers.get("content-type").is_none() {
                headers.add("content-type", b"text/plain");
            }
        }
        let stream = vm.stream_mut(self.context)?;
        stream.response_headers = headers.clone();
        stream.response_body.clear();
        stream.response_code_details = Some(details);
        if from_response_path {
            self.response = Half { stage: Stage::Done, ended: true, ..Half::default() };
            let headers_only = reply.body.is_empty();
            step.out.push(Out::ResponseHeaders(headers, headers_only));
            if !headers_only {
                step.out.push(Out::ResponseData(reply.body, true));
            }
            return Ok(());
        }
        self.response = Half { held: reply.body, ended: true, ..Half::default() };
        // The reply is complete: run the response side as if it had arrived whole.
        let end_with_headers = self.response.held.is_empty();
        let action = vm.on_response_headers(self.context, end_with_headers)?;
        match action {
            Action::Continue => self.release_headers(vm, Direction::Response, step),
            Action::Pause => {
                self.response.stage = Stage::HeadersPaused;
                Ok(())
            }
        }
    }
}
