/* The protocol library page of the Orthanc DPP plugin.
 *
 * Every value read from a protocol is put into the page with textContent
 * (or as an attribute value set through the DOM), never parsed as HTML:
 * DICOM strings come from whoever sent the protocol. */
(function () {
  'use strict';

  var API = new URL('../', document.baseURI).href; // the /dpp/ routes
  var ORTHANC = new URL('../../', document.baseURI).href; // Orthanc's own routes
  var APPROVAL_CLASS = '1.2.840.10008.5.1.4.1.1.200.3';
  var PAGE_SIZE = 50;
  /* rest/protocols.py's MAXIMUM_EXPORT: GET /dpp/export refuses a larger search (413). */
  var MAXIMUM_EXPORT = 1000;
  var ACTIVITY_ROWS = 50;
  var SOP_CLASSES = {
    '1.2.840.10008.5.1.4.1.1.200.1': 'CT protocol',
    '1.2.840.10008.5.1.4.1.1.200.3': 'Protocol approval',
    '1.2.840.10008.5.1.4.1.1.200.7': 'XA protocol'
  };
  var LISTENER_STATES = ['running', 'failed', 'stopped', 'disabled'];
  /* Sequences shown open: the protocol's elements, and each element's constraints. */
  var OPEN_SEQUENCES = [
    'ParametersSpecificationSequence',
    'AcquisitionProtocolElementSpecificationSequence',
    'ReconstructionProtocolElementSpecificationSequence',
    'StorageProtocolElementSpecificationSequence'
  ];

  var state = { offset: 0, total: 0, criteria: {}, selected: [] };

  function byId(id) {
    return document.getElementById(id);
  }

  /* An element with text content and DOM-set attributes. */
  function make(tag, text, attributes) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    Object.keys(attributes || {}).forEach(function (name) {
      node.setAttribute(name, attributes[name]);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) {
      node.removeChild(node.firstChild);
    }
  }

  function apiUrl(path) {
    return API + path;
  }

  /* A JSON answer, or an Error carrying the plugin's "Error" message (and the answer, as payload). */
  function request(method, path, body, contentType) {
    return call(method, apiUrl(path), body, contentType);
  }

  function call(method, url, body, contentType) {
    var options = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      options.body = body;
      if (contentType) {
        options.headers['Content-Type'] = contentType;
      }
    }
    return fetch(url, options).then(function (response) {
      return response.text().then(function (text) {
        var payload = null;
        try {
          payload = text ? JSON.parse(text) : null;
        } catch (ignored) {
          payload = null;
        }
        if (!response.ok && !(payload && payload.Files)) {
          var message = payload && payload.Error ? payload.Error : 'HTTP ' + response.status;
          var error = new Error(message);
          error.payload = payload;
          throw error;
        }
        return payload;
      });
    });
  }

  function protocolPath(uid) {
    return 'protocols/' + encodeURIComponent(uid);
  }

  /* -- listener state and activity ------------------------------------------------ */

  function fact(list, term, value) {
    list.appendChild(make('dt', term));
    var dd = make('dd', value === null || value === undefined || value === '' ? '—' : value);
    list.appendChild(dd);
    return dd;
  }

  function showStatus(status) {
    var list = byId('listener-state');
    clear(list);
    var listener = status.Listener || {};
    var known = LISTENER_STATES.indexOf(listener.State) >= 0 ? listener.State : 'unknown';
    var stateNode = fact(list, 'State', listener.State);
    stateNode.id = 'listener-state-value';
    stateNode.className = 'state state-' + known;
    fact(list, 'AE title', listener.AETitle);
    fact(list, 'Address', listener.BindAddress ? listener.BindAddress + ':' + listener.Port : listener.Port);
    fact(list, 'Associations served', listener.AssociationsServed);
    if (listener.Error) {
      fact(list, 'Error', listener.Error).className = 'error';
    }
    var index = status.Index || {};
    fact(list, 'Index', index.Ready ? 'ready' : 'loading');
    fact(list, 'Protocols stored', (status.Protocols || {}).Total);
    var configuration = status.Configuration || {};
    if (configuration.Valid === false) {
      fact(list, 'Configuration', (configuration.Errors || []).join('; ')).className = 'error';
    }
    fact(list, 'Plugin version', status.Version);
  }

  function loadStatus() {
    return request('GET', 'status').then(showStatus, function (error) {
      var list = byId('listener-state');
      clear(list);
      fact(list, 'State', 'unknown: ' + error.message).className = 'error';
    });
  }

  function loadActivity() {
    return request('GET', 'activity').then(function (answer) {
      var body = byId('activity').tBodies[0];
      clear(body);
      var events = (answer.Events || []).slice(0, ACTIVITY_ROWS);
      if (!events.length) {
        var row = body.insertRow();
        row.appendChild(make('td', 'No activity yet.', { colspan: '3' }));
      }
      events.forEach(function (event) {
        var row = body.insertRow();
        row.appendChild(make('td', String(event.Time || '').replace('T', ' ').replace('Z', '')));
        var level = make('td', event.Level);
        level.className = event.Level === 'ERROR' ? 'error' : event.Level === 'WARNING' ? 'warning' : '';
        row.appendChild(level);
        row.appendChild(make('td', event.Message));
      });
    }, function () { /* shown again on the next refresh */ });
  }

  /* -- the list --------------------------------------------------------------------- */

  function isoToDicom(value) {
    return value ? value.replace(/-/g, '') : '';
  }

  /* YYYYMMDDHHMMSS(.F)(&ZZXX), or a part of it, as YYYY-MM-DD HH:MM:SS. */
  function dicomDateTime(value) {
    var text = String(value || '');
    var parts = /^(\d{4})(\d{2})(\d{2})(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?(.*)$/.exec(text);
    if (!parts) {
      return text;
    }
    var time = [parts[4], parts[5], parts[6]].filter(Boolean).join(':');
    return parts[1] + '-' + parts[2] + '-' + parts[3] + (time ? ' ' + time : '') + (parts[7] ? ' ' + parts[7] : '');
  }

  function dicomDate(value) {
    var text = String(value || '');
    return /^\d{8}$/.test(text) ? text.slice(0, 4) + '-' + text.slice(4, 6) + '-' + text.slice(6) : text;
  }

  function readCriteria() {
    var form = byId('search-form');
    var criteria = {};
    ['name', 'modality', 'manufacturer', 'model', 'code', 'approval', 'unused', 'sort'].forEach(function (name) {
      var value = form.elements[name].value.trim();
      if (value) {
        criteria[name] = value;
      }
    });
    var from = isoToDicom(form.elements['date-from'].value);
    var to = isoToDicom(form.elements['date-to'].value);
    if (from || to) {
      criteria.date = from === to ? from : from + '-' + to;
    }
    return criteria;
  }

  /* Spaces as %20, not "+": the plugin decodes percent-escapes only. */
  function queryString(query) {
    return Object.keys(query).map(function (name) {
      return encodeURIComponent(name) + '=' + encodeURIComponent(query[name]);
    }).join('&');
  }

  function listQuery() {
    var query = { offset: String(state.offset), limit: String(PAGE_SIZE) };
    Object.keys(state.criteria).forEach(function (name) {
      query[name] = state.criteria[name];
    });
    return 'protocols?' + queryString(query);
  }

  /* The whole search, not just the page shown: GET /dpp/export takes the list's criteria. */
  function exportUrl() {
    var query = queryString(state.criteria);
    return apiUrl('export' + (query ? '?' + query : ''));
  }

  /* A link without href cannot be followed: past the export's limit, the download
     would only be the server's refusal, so the link says why instead. */
  function showExport(total) {
    var link = byId('export-link');
    var hint = byId('export-hint');
    if (total > MAXIMUM_EXPORT) {
      link.removeAttribute('href');
      link.setAttribute('aria-disabled', 'true');
      hint.textContent = total + ' protocols match; an export holds at most ' + MAXIMUM_EXPORT +
        ': narrow the search to export.';
    } else {
      link.href = exportUrl();
      link.removeAttribute('aria-disabled');
      hint.textContent = '';
    }
  }

  function codesText(codes) {
    return (codes || []).map(function (code) {
      var label = [code.CodingSchemeDesignator, code.CodeValue].filter(Boolean).join(' ');
      return code.CodeMeaning ? label + ' — ' + code.CodeMeaning : label;
    });
  }

  function listCell(lines) {
    var cell = make('td');
    lines.filter(Boolean).forEach(function (line) {
      cell.appendChild(make('div', line));
    });
    return cell;
  }

  function actionButton(text, className, handler) {
    var button = make('button', text, { type: 'button' });
    button.className = className;
    button.addEventListener('click', handler);
    return button;
  }

  function protocolRow(protocol) {
    var row = make('tr');
    row.dataset.uid = protocol.SOPInstanceUID;
    var name = make('td');
    name.className = 'name';
    name.appendChild(make('div', protocol.ProtocolName || approvesText(protocol) || '(no name)'));
    name.appendChild(make('div', protocol.SOPInstanceUID, { 'class': 'uid' }));
    row.appendChild(name);
    row.appendChild(make('td', protocol.EquipmentModality || ''));
    var makers = [protocol.Manufacturer].concat(protocol.Manufacturers || []);
    var models = [protocol.ManufacturerModelName].concat(protocol.ManufacturerModelNames || []);
    var unique = function (values) {
      return values.filter(function (value, i) { return value && values.indexOf(value) === i; });
    };
    row.appendChild(listCell([unique(makers).join(', '), unique(models).join(', ')]));
    row.appendChild(listCell(codesText(protocol.ScheduledProtocolCodes)));
    row.appendChild(make('td', dicomDate(protocol.InstanceCreationDate), { 'class': 'date' }));
    row.appendChild(make('td', SOP_CLASSES[protocol.SOPClassUID] || protocol.SOPClassUID));
    row.appendChild(approvalCell(protocol.ApprovalState));
    row.appendChild(usageCell(protocol.Usage));
    var actions = make('td');
    actions.className = 'actions';
    var pick = make('input', null, { type: 'checkbox', 'class': 'select' });
    pick.setAttribute('aria-label', 'Select ' + (protocol.ProtocolName || protocol.SOPInstanceUID));
    pick.checked = state.selected.indexOf(protocol.SOPInstanceUID) >= 0;
    pick.addEventListener('change', function () {
      select(protocol.SOPInstanceUID, pick.checked);
    });
    var pickLabel = make('label', null, { 'class': 'select' });
    pickLabel.appendChild(pick);
    pickLabel.appendChild(document.createTextNode(' Select'));
    actions.appendChild(pickLabel);
    actions.appendChild(actionButton('Open', 'open', function () {
      openProtocol(protocol.SOPInstanceUID);
    }));
    var download = make('a', 'Download', {
      href: apiUrl(protocolPath(protocol.SOPInstanceUID) + '/file'),
      download: protocol.SOPInstanceUID + '.dcm'
    });
    download.className = 'button download';
    actions.appendChild(download);
    actions.appendChild(actionButton('Delete', 'delete', function () {
      deleteProtocol(protocol);
    }));
    row.appendChild(actions);
    return row;
  }

  /* What an approval is about, for its row: the protocols it names. */
  function approvesText(protocol) {
    var named = (protocol.Approves || []).map(function (subject) {
      return subject.ProtocolName || subject.SOPInstanceUID + (subject.Stored ? '' : ' (not stored)');
    });
    return named.length ? 'Approval of ' + named.join(', ') : '';
  }

  function approvalCell(approvalState) {
    var cell = make('td', approvalState || '');
    cell.className = 'approval' + (approvalState ? ' approval-' + approvalState : '');
    return cell;
  }

  /* How often, and when last, Performed Procedure Protocols stored here followed the protocol. */
  function usageLines(usage) {
    return [
      usage.Count + (usage.Count === 1 ? ' use' : ' uses'),
      usage.LastUsed ? 'last ' + dicomDateTime(usage.LastUsed) : 'never used'
    ];
  }

  function usageCell(usage) {
    if (!usage) {
      return make('td', '', { 'class': 'usage' });
    }
    var cell = listCell(usageLines(usage));
    cell.className = 'usage';
    return cell;
  }

  /* -- selection: compare two, send some -------------------------------------------- */

  function select(uid, chosen) {
    var at = state.selected.indexOf(uid);
    if (chosen && at < 0) {
      state.selected.push(uid);
    } else if (!chosen && at >= 0) {
      state.selected.splice(at, 1);
    }
    showSelection();
  }

  function showSelection() {
    var count = state.selected.length;
    byId('compare-selected').disabled = count !== 2;
    byId('send-selected').disabled = count === 0 || !byId('send-modality').value;
    byId('selection-info').textContent = count ? count + ' selected' : 'Select rows to compare or send them.';
  }

  function loadList() {
    var message = byId('list-message');
    return request('GET', listQuery()).then(function (answer) {
      state.total = answer.Total;
      var body = byId('protocols').tBodies[0];
      clear(body);
      answer.Protocols.forEach(function (protocol) {
        body.appendChild(protocolRow(protocol));
      });
      var searching = Object.keys(state.criteria).length > 0;
      byId('result-count').textContent = '(' + answer.Total + (searching ? ' found' : '') + ')';
      message.textContent = answer.Total ? '' : searching ? 'No protocol matches the search.' : 'The library is empty.';
      message.className = 'message';
      var last = Math.min(state.offset + answer.Protocols.length, answer.Total);
      byId('page-info').textContent = answer.Total ? (state.offset + 1) + '–' + last + ' of ' + answer.Total : '';
      byId('previous-page').disabled = state.offset === 0;
      byId('next-page').disabled = last >= answer.Total;
      showExport(answer.Total);
    }, function (error) {
      message.textContent = 'The list cannot be read: ' + error.message;
      message.className = 'message error';
    });
  }

  function refreshAll() {
    return Promise.all([loadList(), loadStatus(), loadActivity()]);
  }

  /* -- one protocol ----------------------------------------------------------------- */

  function nodeValue(nodes, keyword) {
    for (var i = 0; i < nodes.length; i += 1) {
      if (nodes[i].Keyword === keyword) {
        return nodes[i].Value;
      }
    }
    return undefined;
  }

  function findNode(nodes, keyword) {
    for (var i = 0; i < nodes.length; i += 1) {
      if (nodes[i].Keyword === keyword) {
        return nodes[i];
      }
    }
    return null;
  }

  /* The constraint's values (Selector XX Value of Constraint Value Sequence). */
  function constraintValues(nodes) {
    var values = findNode(nodes, 'ConstraintValueSequence');
    var found = [];
    (values && values.Items ? values.Items : []).forEach(function (item) {
      item.forEach(function (node) {
        if (/^Selector\w*Value$/.test(node.Keyword) && node.Value !== undefined) {
          found.push(node.Value);
        }
      });
    });
    return found;
  }

  function selectorKeyword(nodes) {
    var selector = nodeValue(nodes, 'SelectorAttribute');
    return selector ? selector.replace(/ \(.*\)$/, '') : '';
  }

  /* A protocol element's name: the value its constraints give to Protocol Element Name. */
  function elementName(nodes) {
    var parameters = findNode(nodes, 'ParametersSpecificationSequence');
    var items = parameters && parameters.Items ? parameters.Items : [];
    for (var i = 0; i < items.length; i += 1) {
      if (selectorKeyword(items[i]) === 'ProtocolElementName') {
        return constraintValues(items[i]).join(', ');
      }
    }
    return nodeValue(nodes, 'ProtocolElementName') || '';
  }

  /* A short label for a sequence item: what it is about, when it says. */
  function itemLabel(nodes) {
    var number = nodeValue(nodes, 'ProtocolElementNumber');
    var name = elementName(nodes);
    if (number || name) {
      return [number ? 'Element ' + number : '', name].filter(Boolean).join(': ');
    }
    var selector = selectorKeyword(nodes);
    if (selector) {
      return [selector, nodeValue(nodes, 'ConstraintType') || '', constraintValues(nodes).join(', ')]
        .filter(Boolean).join(' ');
    }
    return nodeValue(nodes, 'CodeMeaning') || nodeValue(nodes, 'Manufacturer') ||
      nodeValue(nodes, 'InstitutionName') || '';
  }

  function leaf(node) {
    var item = make('li');
    item.className = 'leaf';
    item.appendChild(make('span', node.Name || node.Tag, { 'class': 'attribute', title: node.Keyword || '' }));
    item.appendChild(make('span', '(' + node.Tag + ') ' + node.VR, { 'class': 'tag' }));
    var value;
    if (node.Length !== undefined) {
      value = node.Length + ' bytes';
    } else {
      value = node.Value + (node.Truncated ? ' …' : '');
    }
    item.appendChild(make('span', value, { 'class': 'value' }));
    return item;
  }

  function sequence(node) {
    var item = make('li');
    item.className = 'sequence';
    var details = make('details');
    details.dataset.keyword = node.Keyword || '';
    if (OPEN_SEQUENCES.indexOf(node.Keyword) >= 0) {
      details.open = true;
    }
    var summary = make('summary');
    summary.appendChild(make('span', node.Name || node.Tag, { 'class': 'attribute' }));
    summary.appendChild(make('span', '(' + node.Tag + ') SQ', { 'class': 'tag' }));
    var count = node.Items.length;
    summary.appendChild(make('span', count + (count === 1 ? ' item' : ' items'), { 'class': 'value' }));
    details.appendChild(summary);
    var list = make('ol');
    node.Items.forEach(function (nodes, i) {
      var entry = make('li');
      var itemDetails = make('details');
      itemDetails.className = 'item';
      var label = itemLabel(nodes);
      var itemSummary = make('summary', 'Item ' + (i + 1) + (label ? ' · ' + label : ''));
      itemDetails.appendChild(itemSummary);
      itemDetails.appendChild(tree(nodes));
      entry.appendChild(itemDetails);
      list.appendChild(entry);
    });
    details.appendChild(list);
    item.appendChild(details);
    return item;
  }

  function tree(nodes) {
    var list = make('ul');
    nodes.forEach(function (node) {
      list.appendChild(node.Items ? sequence(node) : leaf(node));
    });
    return list;
  }

  function openProtocol(uid) {
    var section = byId('protocol-section');
    var summary = byId('protocol-summary');
    var target = byId('protocol-tree');
    section.hidden = false;
    clear(summary);
    clear(target);
    clear(byId('protocol-versions'));
    clear(byId('protocol-approvals').tBodies[0]);
    byId('protocol-title').textContent = 'Loading…';
    return Promise.all([
      request('GET', protocolPath(uid)),
      request('GET', protocolPath(uid) + '/tree')
    ]).then(function (answers) {
      var protocol = answers[0];
      section.dataset.uid = protocol.SOPInstanceUID;
      byId('protocol-title').textContent = protocol.ProtocolName || '(no name)';
      fact(summary, 'Type', SOP_CLASSES[protocol.SOPClassUID] || protocol.SOPClassUID);
      fact(summary, 'Modality', protocol.EquipmentModality);
      fact(summary, 'Created by', [protocol.Manufacturer, protocol.ManufacturerModelName].filter(Boolean).join(' '));
      fact(summary, 'For manufacturers', (protocol.Manufacturers || []).join(', '));
      fact(summary, 'For models', (protocol.ManufacturerModelNames || []).join(', '));
      fact(summary, 'Institution', protocol.InstitutionName);
      fact(summary, 'Codes', codesText(protocol.ScheduledProtocolCodes).join('; '));
      fact(summary, 'Created', dicomDate(protocol.InstanceCreationDate));
      fact(summary, 'SOP Instance UID', protocol.SOPInstanceUID);
      fact(summary, 'Orthanc ID', protocol.OrthancID);
      if (protocol.ApprovalState) {
        var approvalNode = fact(summary, 'Approval', protocol.ApprovalState);
        approvalNode.id = 'protocol-approval-state';
        approvalNode.className = 'approval approval-' + protocol.ApprovalState;
      }
      if (protocol.Usage) {
        fact(summary, 'Usage', usageLines(protocol.Usage).join(', '));
      }
      if (protocol.Approves) {
        fact(summary, 'Approves', approvesText(protocol));
      }
      var isProtocol = protocol.SOPClassUID !== APPROVAL_CLASS;
      byId('protocol-approval-part').hidden = !isProtocol;
      if (isProtocol) {
        showApprovals(protocol.Approvals || []);
        loadVersions(protocol.SOPInstanceUID);
      }
      target.appendChild(tree(answers[1].Attributes));
      section.scrollIntoView({ block: 'start' });
    }, function (error) {
      byId('protocol-title').textContent = 'The protocol cannot be shown: ' + error.message;
    });
  }

  /* Each assertion of each stored approval of the protocol, newest first. */
  function showApprovals(approvals) {
    var body = byId('protocol-approvals').tBodies[0];
    var assertions = [];
    /* Reversed first: of two made in the same second, the one stored later comes first. */
    approvals.slice().reverse().forEach(function (approval) {
      (approval.Assertions || []).forEach(function (assertion) {
        assertions.push({ assertion: assertion, current: approval.AppliesToStoredContent });
      });
    });
    assertions.sort(function (a, b) {
      return String(b.assertion.AssertionDateTime || '').localeCompare(String(a.assertion.AssertionDateTime || ''));
    });
    if (!assertions.length) {
      body.insertRow().appendChild(make('td', 'No approval stored.', { colspan: '6' }));
    }
    assertions.forEach(function (entry) {
      var assertion = entry.assertion;
      var code = assertion.AssertionCode || {};
      var row = body.insertRow();
      row.appendChild(make('td', code.CodeMeaning || code.CodeValue || ''));
      row.appendChild(make('td', [assertion.Asserter, assertion.AsserterRole].filter(Boolean).join(', ')));
      row.appendChild(make('td', dicomDateTime(assertion.AssertionDateTime)));
      var expiry = assertion.AssertionExpirationDateTime;
      row.appendChild(make('td', expiry ? dicomDateTime(expiry) + (assertion.Current ? '' : ' (expired)') : 'never'));
      row.appendChild(make('td', entry.current ? 'yes' : 'no (an earlier content)'));
      row.appendChild(make('td', assertion.Comment || '', { class: 'comment' }));
    });
  }

  function decide(assertion) {
    var uid = byId('protocol-section').dataset.uid;
    var message = byId('approval-message');
    var body = { Assertion: assertion };
    var comment = byId('approval-comment').value.trim();
    if (comment) {
      body.Comment = comment;
    }
    var expires = isoToDicom(byId('approval-expires').value);
    if (expires) {
      body.ExpiresOn = expires;
    }
    message.textContent = 'Saving…';
    message.className = 'message';
    return request('POST', protocolPath(uid) + '/approvals', JSON.stringify(body), 'application/json')
      .then(function (answer) {
        byId('approval-comment').value = '';
        byId('approval-expires').value = '';
        return Promise.all([openProtocol(uid), loadList(), loadActivity()]).then(function () {
          message.textContent = (assertion === 'approved' ? 'Approved' : 'Rejected') +
            ': approval ' + answer.SOPInstanceUID + ' stored.';
        });
      }, function (error) {
        message.textContent = 'Not saved: ' + error.message;
        message.className = 'message error';
      });
  }

  function versionList(title, links, missing) {
    var part = make('div');
    part.appendChild(make('h4', title));
    var list = make('ol', null, { 'class': 'version-links' });
    if (!links.length) {
      list.appendChild(make('li', missing));
    }
    links.forEach(function (link) {
      var item = make('li');
      item.dataset.uid = link.SOPInstanceUID;
      if (link.Stored) {
        item.appendChild(actionButton(link.ProtocolName || link.SOPInstanceUID, 'version', function () {
          openProtocol(link.SOPInstanceUID);
        }));
        item.appendChild(make('span', ' ' + [dicomDate(link.InstanceCreationDate), link.ContentCreatorName]
          .filter(Boolean).join(' · ')));
      } else {
        item.className = 'missing';
        item.appendChild(make('span', link.SOPInstanceUID, { 'class': 'uid' }));
        item.appendChild(make('span', ' not stored here: the chain is broken here'));
      }
      list.appendChild(item);
    });
    part.appendChild(list);
    return part;
  }

  function loadVersions(uid) {
    var target = byId('protocol-versions');
    return request('GET', protocolPath(uid) + '/versions').then(function (answer) {
      clear(target);
      target.appendChild(versionList('Earlier versions, nearest first', answer.Predecessors || [], 'None named.'));
      target.appendChild(versionList('Later versions, nearest first', answer.Successors || [], 'None stored.'));
    }, function (error) {
      clear(target);
      target.appendChild(make('p', 'The versions cannot be read: ' + error.message, { 'class': 'error' }));
    });
  }

  /* -- compare ---------------------------------------------------------------------- */

  /* An attribute in DICOM JSON, as text: values joined by "\", anything nested as JSON. */
  function dicomJsonText(attribute) {
    if (attribute === null || attribute === undefined) {
      return '(absent)';
    }
    var values = attribute.Value;
    if (values === undefined) {
      return attribute.vr ? '(empty)' : JSON.stringify(attribute);
    }
    return values.map(function (value) {
      if (value !== null && typeof value === 'object') {
        return value.Alphabetic !== undefined ? value.Alphabetic : JSON.stringify(value);
      }
      return String(value);
    }).join('\\');
  }

  function compareSelected() {
    var uids = state.selected.slice(0, 2);
    var section = byId('compare-section');
    var sides = byId('compare-sides');
    var body = byId('differences').tBodies[0];
    var message = byId('compare-message');
    section.hidden = false;
    clear(sides);
    clear(body);
    message.textContent = 'Comparing…';
    message.className = 'message';
    return Promise.all([
      request('GET', protocolPath(uids[0])),
      request('GET', protocolPath(uids[1])),
      request('GET', protocolPath(uids[0]) + '/diff/' + encodeURIComponent(uids[1]))
    ]).then(function (answers) {
      [answers[0], answers[1]].forEach(function (protocol, i) {
        fact(sides, i ? 'B' : 'A', (protocol.ProtocolName || '(no name)') + ' · ' + protocol.SOPInstanceUID +
          ' · ' + dicomDate(protocol.InstanceCreationDate));
      });
      var differences = answers[2].Differences || [];
      message.textContent = differences.length ?
        differences.length + (differences.length === 1 ? ' difference' : ' differences') :
        'No differences: the two hold the same content.';
      differences.forEach(function (difference) {
        var row = body.insertRow();
        var path = make('td');
        path.appendChild(make('div', difference.Path));
        path.appendChild(make('div', difference.Tag, { 'class': 'uid' }));
        row.appendChild(path);
        row.appendChild(make('td', dicomJsonText(difference.A), { 'class': 'side-a' }));
        row.appendChild(make('td', dicomJsonText(difference.B), { 'class': 'side-b' }));
      });
      section.scrollIntoView({ block: 'start' });
    }, function (error) {
      message.textContent = 'The two cannot be compared: ' + error.message;
      message.className = 'message error';
    });
  }

  /* -- send to a modality ----------------------------------------------------------- */

  /* Orthanc's own list of DicomModalities (same origin, the same credentials). */
  function loadModalities() {
    var choice = byId('send-modality');
    return call('GET', ORTHANC + 'modalities').then(function (names) {
      clear(choice);
      (names || []).slice().sort().forEach(function (name) {
        choice.appendChild(make('option', name, { value: name }));
      });
      if (!choice.options.length) {
        choice.appendChild(make('option', 'no modality declared', { value: '' }));
      }
      showSelection();
    }, function (error) {
      clear(choice);
      choice.appendChild(make('option', 'modalities unknown: ' + error.message, { value: '' }));
      showSelection();
    });
  }

  /* The push runs as a job of the plugin (POST .../store with Asynchronous), so that
     a long one neither holds a request open nor leaves the page without news:
     the job is asked for its progress every half second until it ends. */
  function sendSelected() {
    var modality = byId('send-modality').value;
    var results = byId('send-results');
    var uids = state.selected.slice();
    clear(results);
    var progress = make('li', 'Sending ' + uids.length + ' to ' + modality + '…');
    results.appendChild(progress);
    var path = 'modalities/' + encodeURIComponent(modality) + '/store';
    var show = function (answer, failure) {
      clear(results);
      var head = make('li', 'To ' + modality + ': ' + (answer ?
        answer.Completed + ' stored, ' + answer.Warning + ' with a warning, ' + answer.Failed + ' failed' : '') +
        (failure ? (answer ? ' · ' : '') + failure : ''));
      head.className = failure || (answer && answer.Failed) ? 'failed' : 'stored';
      results.appendChild(head);
      ((answer && answer.Results) || []).forEach(function (result) {
        var line = make('li');
        line.dataset.uid = result.SOPInstanceUID;
        line.className = result.Outcome === 'Failure' ? 'failed' : 'stored';
        line.appendChild(make('span', result.SOPInstanceUID, { 'class': 'file' }));
        line.appendChild(make('span', result.Outcome + (result.Status ? ' (' + result.Status + ')' : '') +
          (result.Error ? ': ' + result.Error : ''), { 'class': 'outcome' }));
        results.appendChild(line);
      });
    };
    var follow = function (id) {
      return request('GET', 'jobs/' + encodeURIComponent(id)).then(function (job) {
        if (job.State === 'Pending' || job.State === 'Running') {
          progress.textContent = 'Sending ' + uids.length + ' to ' + modality + '… ' + job.Progress + '%';
          return new Promise(function (resolve) { window.setTimeout(resolve, 500); }).then(function () {
            return follow(id);
          });
        }
        var result = job.Result || null;
        show(result, (result && result.Error) || (job.Error && job.Error.Error) ||
          (result ? '' : 'the push ended ' + job.State));
        loadActivity();
      });
    };
    return request('POST', path, JSON.stringify({ SOPInstanceUIDs: uids, Asynchronous: true }), 'application/json')
      .then(function (job) {
        return follow(job.ID);
      }).catch(function (error) {
        show(error.payload && error.payload.Results ? error.payload : null, error.message);
      });
  }

  function closeProtocol() {
    var section = byId('protocol-section');
    section.hidden = true;
    delete section.dataset.uid;
  }

  function deleteProtocol(protocol) {
    var name = protocol.ProtocolName || protocol.SOPInstanceUID;
    if (!window.confirm('Delete the protocol "' + name + '" from Orthanc?')) {
      return Promise.resolve();
    }
    var message = byId('list-message');
    return request('DELETE', protocolPath(protocol.SOPInstanceUID)).then(function () {
      select(protocol.SOPInstanceUID, false);
      message.textContent = 'Deleted: ' + name;
      message.className = 'message';
      if (byId('protocol-section').dataset.uid === protocol.SOPInstanceUID) {
        closeProtocol();
      }
      if (state.offset > 0 && state.offset >= state.total - 1) {
        state.offset = Math.max(0, state.offset - PAGE_SIZE);
      }
      return Promise.all([loadList(), loadStatus(), loadActivity()]).then(function () {
        message.textContent = 'Deleted: ' + name;
      });
    }, function (error) {
      message.textContent = 'Not deleted: ' + error.message;
      message.className = 'message error';
    });
  }

  /* -- uploads ---------------------------------------------------------------------- */

  function uploadOne(file) {
    var line = make('li');
    line.appendChild(make('span', file.name, { 'class': 'file' }));
    var outcome = make('span', 'uploading…', { 'class': 'outcome' });
    line.appendChild(outcome);
    byId('upload-results').appendChild(line);
    /* One DICOM body per request: Orthanc takes multipart/form-data apart itself
       and would answer for the plugin. */
    return file.arrayBuffer().then(function (data) {
      return request('POST', 'protocols', data, 'application/dicom');
    }).then(function (answer) {
      var result = answer.Files[0];
      if (result.Stored) {
        line.className = 'stored';
        outcome.textContent = (result.Status === 'AlreadyStored' ? 'already stored' : 'stored') +
          ' · ' + result.SOPInstanceUID;
      } else {
        line.className = 'failed';
        outcome.textContent = 'refused: ' + result.Error;
      }
    }, function (error) {
      line.className = 'failed';
      outcome.textContent = 'refused: ' + error.message;
    });
  }

  function uploadFiles(files) {
    var list = Array.prototype.slice.call(files || []);
    if (!list.length) {
      return Promise.resolve();
    }
    clear(byId('upload-results'));
    /* One at a time: each file gets its own answer, and Orthanc is not flooded. */
    return list.reduce(function (previous, file) {
      return previous.then(function () { return uploadOne(file); });
    }, Promise.resolve()).then(refreshAll);
  }

  function setUpDropZone() {
    var zone = byId('drop-zone');
    ['dragenter', 'dragover'].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add('dragging');
      });
    });
    zone.addEventListener('dragleave', function () {
      zone.classList.remove('dragging');
    });
    zone.addEventListener('drop', function (event) {
      event.preventDefault();
      zone.classList.remove('dragging');
      uploadFiles(event.dataTransfer ? event.dataTransfer.files : []);
    });
    var input = byId('file-input');
    input.addEventListener('change', function () {
      uploadFiles(input.files).then(function () {
        input.value = '';
      });
    });
  }

  /* -- start ------------------------------------------------------------------------ */

  function start() {
    byId('search-form').addEventListener('submit', function (event) {
      event.preventDefault();
      state.criteria = readCriteria();
      state.offset = 0;
      loadList();
    });
    byId('search-form').addEventListener('reset', function () {
      state.criteria = {};
      state.offset = 0;
      window.setTimeout(loadList, 0); /* after the fields are cleared */
    });
    byId('previous-page').addEventListener('click', function () {
      state.offset = Math.max(0, state.offset - PAGE_SIZE);
      loadList();
    });
    byId('next-page').addEventListener('click', function () {
      state.offset += PAGE_SIZE;
      loadList();
    });
    byId('close-protocol').addEventListener('click', closeProtocol);
    byId('approve').addEventListener('click', function () { decide('approved'); });
    byId('reject').addEventListener('click', function () { decide('rejected'); });
    byId('compare-selected').addEventListener('click', compareSelected);
    byId('close-compare').addEventListener('click', function () {
      byId('compare-section').hidden = true;
    });
    byId('send-modality').addEventListener('change', showSelection);
    byId('send-selected').addEventListener('click', sendSelected);
    byId('export-link').href = exportUrl();
    showSelection();
    loadModalities();
    byId('refresh-activity').addEventListener('click', function () {
      loadStatus();
      loadActivity();
    });
    setUpDropZone();
    refreshAll();
    /* The listener's state and the activity change without this page. */
    window.setInterval(function () {
      if (!document.hidden) {
        loadStatus();
        loadActivity();
      }
    }, 10000);
  }

  start();
}());
