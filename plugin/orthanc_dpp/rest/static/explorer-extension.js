/* Orthanc DPP plugin: a "Protocol library" button on Orthanc Explorer's home page
   (the "Lookup studies" page), opening the plugin's page /dpp/ui/index.html. */
(function () {
  'use strict';
  $('#lookup').live('pagebeforecreate', function () {
    if ($('#dpp-protocol-library').length) {
      return;
    }
    var button = $('<a>')
      .attr('id', 'dpp-protocol-library')
      .attr('href', '../dpp/ui/index.html')
      .attr('data-role', 'button')
      .attr('data-icon', 'grid')
      .attr('data-theme', 'e')
      .attr('data-ajax', 'false')
      .attr('rel', 'external')
      .text('Defined Procedure Protocol library');
    button.insertBefore($('#lookup-result'));
  });
}());
